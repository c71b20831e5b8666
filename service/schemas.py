"""Request and response bodies of the API (strict: no silent coercion of wrong types)."""

from __future__ import annotations

import math
import operator
import unicodedata
from functools import reduce
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    WithJsonSchema,
)

from .filters import WORD_PATTERN

# Integers a JSON client (JavaScript's doubles included) reads back exactly; a longer digit run is
# no metadata anyone needs, and Python refuses to print integers past 4300 digits.
SAFE_INTEGER = 2**53 - 1


def _no_control_characters(value: str) -> str:
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError("must not contain control characters")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


ItemId = Annotated[
    StrictStr,
    Field(min_length=1, max_length=256, examples=["50"]),
    AfterValidator(_no_control_characters),
]
UserId = Annotated[
    StrictStr,
    Field(min_length=1, max_length=256, examples=["42"]),
    AfterValidator(_no_control_characters),
]
EventId = Annotated[
    StrictStr,
    Field(min_length=1, max_length=128, examples=["3f2a9c1d-0b4e-4c1d-9a1e-0f8b3c9a7d21"]),
    AfterValidator(_no_control_characters),
]
# The last second a datetime can hold (9999-12-31T23:59:59Z): a timestamp any client can print.
MAX_TIMESTAMP = 253_402_300_799
MetadataKey = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_no_control_characters)]
MetadataText = Annotated[StrictStr, Field(max_length=4096)]


def _metadata_kind(value) -> str | None:
    """Which kind of metadata value this is, by its JSON type: the value is checked against that
    kind alone, so an error says what is wrong with it (not why it is none of the four kinds), and
    an integer out of bounds is refused rather than taken as a float."""
    if isinstance(value, bool):
        return None
    for kind, types in (("string", str), ("integer", int), ("number", float), ("list", list)):
        if isinstance(value, types):
            return kind
    return None


_METADATA_KINDS = {
    "string": MetadataText,
    "integer": Annotated[StrictInt, Field(ge=-SAFE_INTEGER, le=SAFE_INTEGER)],
    "number": Annotated[StrictFloat, AfterValidator(_finite)],
    "list": Annotated[list[Annotated[StrictStr, Field(max_length=256)]], Field(max_length=64)],
}
MetadataValue = Annotated[
    reduce(operator.or_, (Annotated[kind, Tag(name)] for name, kind in _METADATA_KINDS.items())),
    Discriminator(
        _metadata_kind,
        custom_error_type="metadata_value_type",
        custom_error_message="must be a string, a number or a list of strings",
    ),
    # Documented as anyOf: a JSON integer is also a JSON number, which a oneOf would forbid.
    WithJsonSchema(TypeAdapter(reduce(operator.or_, _METADATA_KINDS.values())).json_schema()),
]


# Caps on a request's filters, shown in the schema (docs/api.md, "Filters").
MAX_EXCLUDE_ITEMS = 1000
MAX_FILTER_FIELDS = 8
MAX_FILTER_VALUES = 32

FilterField = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_no_control_characters)]
FilterWord = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=64,
        pattern=rf"^{WORD_PATTERN}$",
        description="one whole word: letters, digits and underscores, which may be joined by single "
        "apostrophes or hyphens (Children's, Sci-Fi); matched case-insensitively",
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class RecommendationRequest(_Strict):
    history: list[ItemId] | None = Field(
        None,
        description="item ids the user interacted with, oldest first (GENREC_MAX_HISTORY at most). "
        "Repeats are kept as sent (a repeated interaction is part of the history the model reads); "
        "unknown ids are listed once each, and exclude_history excludes each id once. Absent: the "
        "user_id's stored events (POST /v1/events), their latest GENREC_MAX_HISTORY; a history given "
        "here wins over the stored one. Empty (or absent with no stored events): the most popular items.",
    )
    user_id: UserId | None = Field(
        None,
        description="the user: without a history, their stored events are the history; also passed to "
        "the method (bundles with a user vocabulary use it)",
    )
    k: StrictInt = Field(10, ge=1, description="how many items to return (GENREC_MAX_K at most)")
    exclude_history: StrictBool = Field(True, description="never recommend an item of the history")
    exclude_items: list[ItemId] = Field(
        [],
        max_length=MAX_EXCLUDE_ITEMS,
        description="item ids never to recommend (e.g. out of stock); each must be in the catalog "
        "(unknown ids: 422 unknown_items). Excluded inside the search: the answer still has k items "
        "whenever k others qualify.",
    )
    filter: dict[FilterField, Annotated[list[FilterWord], Field(min_length=1, max_length=MAX_FILTER_VALUES)]] | None = (
        Field(
            None,
            min_length=1,
            max_length=MAX_FILTER_FIELDS,
            description="only items whose metadata field holds one of the listed words, as a whole word, "
            "case-insensitively; several fields must all match (AND), several words of a field are "
            "alternatives (OR). Fields: the bundle items' item-text fields (e.g. title, year, genres) and "
            "the keys of minted items' metadata; a field no item has: 422 unknown_filter_field. Applied "
            "inside the search: the answer still has k items whenever k qualify.",
            examples=[{"genres": ["Comedy", "Animation"]}],
        )
    )

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={"examples": [
            {"history": ["1", "50", "181"], "k": 10, "exclude_history": True},
            {"history": ["1", "50", "181"], "k": 5, "exclude_items": ["405"], "filter": {"genres": ["Comedy"]}},
            {"user_id": "42", "k": 10},
        ]},
    )


class RecommendedItem(BaseModel):
    item_id: str
    textual_id: str = Field(description="the item's textual ID (what the model generated)")
    score: float = Field(
        description='strategy "model": the method\'s score, higher is better (IDGenRec: the log-probability '
        'of the textual ID); "popular": the item\'s share of the training interactions, in (0, 1]'
    )


class ModelInfo(BaseModel):
    kind: str = Field(examples=["idgenrec"])
    bundle: str = Field(description="dataset and a short digest of the bundle's files", examples=["ml-100k-3f2a9c1d0b4e"])
    dataset: str | None = None
    created_at: str | None = None


class RecommendationResponse(BaseModel):
    items: list[RecommendedItem]
    model: ModelInfo
    strategy: Literal["model", "popular"] = Field(
        description='"model": the bundle\'s method read the history; "popular": the history was empty, so '
        "the answer is the bundle's most popular items (by training interactions)"
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"item_id": "174", "textual_id": "raiders lost ark", "score": -1.23},
                        {"item_id": "172", "textual_id": "empire strikes back", "score": -1.87},
                    ],
                    "model": {"kind": "idgenrec", "bundle": "ml-100k-3f2a9c1d0b4e", "dataset": "ml-100k",
                              "created_at": "2025-01-01T00:00:00+00:00"},
                    "strategy": "model",
                }
            ]
        }
    )


class ItemCreateRequest(_Strict):
    item_id: ItemId
    metadata: dict[MetadataKey, MetadataValue] = Field(
        ...,
        min_length=1,
        description="non-empty: strings, numbers or lists of strings (lists are joined with spaces)",
    )

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "item_id": "new-1001",
                    "metadata": {"title": "Toy Story 5", "year": 2026, "genres": ["Animation", "Comedy"]},
                }
            ]
        },
    )


class ItemCreated(BaseModel):
    item_id: str
    textual_id: str
    created: bool = Field(description="true when this call minted the ID; false when the item existed")
    recommendable: bool = Field(
        True,
        description="whether recommendations can return the item now: always for idgenrec bundles "
        "(its ID joins the trie); for cllm4rec bundles only items the model was trained with "
        "(new items need a retrained bundle)",
    )

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"item_id": "new-1001", "textual_id": "toy story 5", "created": True}]}
    )


class ItemRecordResponse(BaseModel):
    item_id: str
    textual_id: str
    metadata: dict | None = Field(None, description="metadata as posted (null for the bundle's own items)")
    text: str = Field(description="the flattened item text the ID generator read")
    source: str = Field(description='"bundle" or "minted"')
    created_at: str | None = None
    recommendable: bool = Field(True, description="whether recommendations can return the item (see ItemCreated)")
    partial: bool = Field(
        False,
        description="true when Redis could not be read and this replica knows only the item's textual ID "
        "(an item another replica minted): metadata, text and created_at are missing; ask again later",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "item_id": "new-1001",
                    "textual_id": "toy story 5",
                    "metadata": {"title": "Toy Story 5", "year": 2026, "genres": ["Animation", "Comedy"]},
                    "text": "title: Toy Story 5; year: 2026; genres: Animation Comedy",
                    "source": "minted",
                    "created_at": "2026-01-01T12:00:00.000+00:00",
                }
            ]
        }
    )


class Event(_Strict):
    user_id: UserId
    item_id: ItemId
    timestamp: Annotated[float, Field(ge=0, le=MAX_TIMESTAMP, allow_inf_nan=False)] | None = Field(
        None, description="when it happened, unix seconds (fractions kept); absent: when it is received "
        "(the Redis server's clock, one clock for every replica)", examples=[1732350000.5]
    )
    event_id: EventId | None = Field(
        None, description="the client's id of the event: a repeat of it for the same user (within "
        "GENREC_EVENT_ID_TTL_S) is not stored again, so a batch can be retried safely"
    )


class EventsRequest(_Strict):
    events: list[Event] = Field(
        ..., min_length=1, description="interactions, in any order (each user's are kept in timestamp order); "
        "GENREC_MAX_EVENTS_PER_REQUEST at most"
    )

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"events": [{"user_id": "42", "item_id": "1", "timestamp": 1732350000, "event_id": "e-1"},
                            {"user_id": "42", "item_id": "50", "event_id": "e-2"}]}
            ]
        },
    )


class EventsAccepted(BaseModel):
    accepted: int = Field(description="events stored")
    duplicates: int = Field(description="events not stored: their event_id was seen before for their user")

    model_config = ConfigDict(json_schema_extra={"examples": [{"accepted": 2, "duplicates": 0}]})


class StoredEvent(BaseModel):
    item_id: str
    timestamp: float = Field(description="unix seconds")


class UserEventsResponse(BaseModel):
    user_id: str
    events: list[StoredEvent] = Field(
        description="the user's stored events, oldest first (empty for a user with none): the latest "
        "GENREC_MAX_HISTORY of them are the history of a recommendation by user_id"
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"user_id": "42", "events": [{"item_id": "1", "timestamp": 1732350000.0},
                                                      {"item_id": "50", "timestamp": 1732350061.25}]}]
        }
    )


SEARCH_MAX_LIMIT = 100  # most items one title search answers


class ItemSearchHit(BaseModel):
    item_id: str
    textual_id: str
    title: str = Field(description="the item's title field (title, movie_title or name), else its whole text")
    recommendable: bool = Field(description="whether recommendations can return the item (see ItemCreated)")


class ItemSearchResponse(BaseModel):
    items: list[ItemSearchHit] = Field(description="the matching items in catalog order, at most `limit`")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"items": [{"item_id": "50", "textual_id": "star wars", "title": "Star Wars (1977)",
                            "recommendable": True}]}
            ]
        }
    )


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    checks: dict[str, str] = Field(examples=[{"bundle": "ok", "redis": "ok"}])
