"""Request and response bodies of the API (strict: no silent coercion of wrong types)."""

from __future__ import annotations

import math
import operator
import re
from functools import reduce
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
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

from genrec.word_characters import BMP_NON_WORD_CHARACTERS

# Integers a JSON client (JavaScript's doubles included) reads back exactly; a longer digit run is
# no metadata anyone needs, and Python refuses to print integers past 4300 digits. Metadata
# numbers, integers or not, keep within it.
SAFE_INTEGER = 2**53 - 1

# Character classes of the OpenAPI document's patterns, spelled as explicit \uXXXX ranges so that
# ECMA-262 (what the document's `pattern` means) and Python's `re` (what the server and
# schemathesis run) read them alike; \w, \s and \d are expanded differently by the two.
CONTROL_CHARACTERS = r"\u0000-\u001f\u007f-\u009f"  # Unicode's Cc category
WHITESPACE = r"\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"  # str.isspace
# What separates the words of a metadata value: ASCII other than letters, digits and `_`, and the
# punctuation and spaces of Latin-1, of General Punctuation, of CJK and of fullwidth ASCII.
WORD_SEPARATORS = (r"\u0000-\u002f\u003a-\u0040\u005b-\u005e\u0060\u007b-\u00bf\u2000-\u206f\u3000-\u303f"
                   r"\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65")
# What is not a word character of a filter word (genrec/word_characters.py: controls and formats
# but the zero-width joiners, private use, punctuation but connectors, symbols and separators),
# spelled as the complement within the BMP: a character beyond it is a word character in every
# reading (to ECMA-262 without the u flag, both halves of its surrogate pair are). Within the BMP
# it is the filter index's word character exactly, so a word the index holds can be asked, and a
# word asked is one the index can hold unless it has a character beyond the BMP that is no word
# character (an emoji: the index splits words there).
NON_WORD_CHARACTERS = BMP_NON_WORD_CHARACTERS
NO_CONTROL_CHARACTERS = f"^[^{CONTROL_CHARACTERS}]*$"
BLANK = f"^[{WHITESPACE}]*$"
_CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")

# The served document states limits that are settings (GENREC_MAX_HISTORY, ...): a schema node
# names them under this key, and service/openapi.py replaces the names by the keywords.
SETTINGS_KEY = "x-genrec-settings"


def set_by(*settings: str) -> dict:
    """`json_schema_extra` of a field whose limits are these settings (names of Settings fields)."""
    return {SETTINGS_KEY: list(settings)}


def words_at_most(max_chars: int) -> str:
    """The pattern of a text with no word over `max_chars` characters, a word being a run of
    characters between WORD_SEPARATORS (GENREC_MAX_METADATA_WORD_CHARS)."""
    sep, word = f"[{WORD_SEPARATORS}]", f"[^{WORD_SEPARATORS}]"
    return f"^{sep}*(?:{word}{{1,{max_chars}}}{sep}+)*{word}{{0,{max_chars}}}$"


def _no_control_characters(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _integral(value: object) -> object:
    """JSON Schema's integer: 13.0 is one (JSON does not tell it from 13, and a client's numbers
    may all be doubles); 13.5, true and "13" are not, and strict validation refuses them."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


ItemId = Annotated[
    StrictStr,
    Field(min_length=1, max_length=256, examples=["50"], json_schema_extra={"pattern": NO_CONTROL_CHARACTERS}),
    AfterValidator(_no_control_characters),
]
UserId = Annotated[
    StrictStr,
    Field(min_length=1, max_length=256, examples=["42"], json_schema_extra={"pattern": NO_CONTROL_CHARACTERS}),
    AfterValidator(_no_control_characters),
]
EventId = Annotated[
    StrictStr,
    Field(min_length=1, max_length=128, examples=["3f2a9c1d-0b4e-4c1d-9a1e-0f8b3c9a7d21"],
          json_schema_extra={"pattern": NO_CONTROL_CHARACTERS}),
    AfterValidator(_no_control_characters),
]
# The last second a datetime can hold (9999-12-31T23:59:59Z): a timestamp any client can print.
MAX_TIMESTAMP = 253_402_300_799
MetadataKey = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_no_control_characters)]
# Every string of the metadata, a list's included: GENREC_MAX_METADATA_VALUE_CHARS characters at most
# (state.py checks it; the schema here keeps the static caps) and no word over
# GENREC_MAX_METADATA_WORD_CHARS.
_METADATA_STRING_SETTINGS = set_by("max_metadata_value_chars", "max_metadata_word_chars")
MetadataText = Annotated[StrictStr, Field(max_length=4096, json_schema_extra=_METADATA_STRING_SETTINGS)]
MetadataListText = Annotated[StrictStr, Field(max_length=256, json_schema_extra=_METADATA_STRING_SETTINGS)]
# A value with no text: a string of whitespace, or a list of such strings (or none). Metadata
# whose every value is blank gives the ID generator nothing to read.
_BLANK_VALUE = {"anyOf": [{"type": "string", "pattern": BLANK},
                          {"type": "array", "items": {"type": "string", "pattern": BLANK}}]}


def _metadata_schema(schema: dict) -> None:
    """What the metadata's JSON schema says beyond its type: keys without control characters
    (as propertyNames: a pattern on the key type would make pydantic write patternProperties,
    which leave other keys free), the field count a setting, and not every value blank."""
    schema["propertyNames"]["pattern"] = NO_CONTROL_CHARACTERS
    schema.update(set_by("max_metadata_fields"))
    schema["not"] = {"additionalProperties": _BLANK_VALUE}


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
    # Bounded like integers: JSON does not tell 1e20 from 100000000000000000000, so neither may pass.
    "number": Annotated[StrictFloat, Field(ge=-SAFE_INTEGER, le=SAFE_INTEGER), AfterValidator(_finite)],
    "list": Annotated[list[MetadataListText], Field(max_length=64)],
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
# Word characters joined by single apostrophes (' or ’) or hyphens, as filters.py reads words.
_WORD_CHARACTER = f"[^{NON_WORD_CHARACTERS}]"
FILTER_WORD = rf"^{_WORD_CHARACTER}+(?:['\u2019-]{_WORD_CHARACTER}+)*$"
_FILTER_WORD = re.compile(FILTER_WORD)


def _one_word(value: str) -> str:
    """FILTER_WORD, checked by Python's re: pydantic's own engine reads a pattern's classes with
    Unicode tables of its own, and would print the whole class in its error."""
    if not _FILTER_WORD.fullmatch(value):
        raise ValueError("must be one whole word: letters (marks included), digits and underscores, which may be "
                         "joined by single apostrophes or hyphens")
    return value


FilterWord = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=64,
        description="one whole word: letters (marks included), digits and underscores, which may be joined by "
        "single apostrophes or hyphens (Children's, Sci-Fi); matched case-insensitively",
        json_schema_extra={"pattern": FILTER_WORD},
    ),
    AfterValidator(_one_word),
]


def _filter_schema(schema: dict) -> None:
    """Field names without control characters, as propertyNames (see _metadata_schema)."""
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "object":
            branch["propertyNames"]["pattern"] = NO_CONTROL_CHARACTERS


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
        json_schema_extra=set_by("max_history"),
    )
    user_id: UserId | None = Field(
        None,
        description="the user: without a history, their stored events are the history; also passed to "
        "the method (bundles with a user vocabulary use it)",
    )
    k: Annotated[StrictInt, BeforeValidator(_integral)] = Field(
        10, ge=1, description="how many items to return (GENREC_MAX_K at most; by default 10, or GENREC_MAX_K when "
        "smaller); a number with no fractional part (13.0 is 13)",
        json_schema_extra=set_by("max_k"))
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
            json_schema_extra=_filter_schema,
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
        description="strings, numbers (within ±(2^53-1)) or lists of strings (joined with spaces), at least "
        "one of them with text (not only whitespace); GENREC_MAX_METADATA_FIELDS fields at most. The item "
        "text they flatten to (`title: ...; genres: ...`) over GENREC_MAX_METADATA_CHARS characters gets 413",
        json_schema_extra=_metadata_schema,
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
        "GENREC_MAX_EVENTS_PER_REQUEST at most", json_schema_extra=set_by("max_events_per_request"),
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


class ServingBundle(BaseModel):
    """Which bundle a replica serves (readiness, reloads)."""

    bundle: str = Field(description="dataset and digest of every file of the bundle", examples=["ml-100k-a4a6a502227b"])
    digest: str = Field(description="digest of every file of the bundle (its manifest's checksums)")
    path: str | None = Field(None, description="the bundle folder (symbolic links resolved on a reload); not in "
                             "/readyz, which anyone who reaches the replica may read")
    kind: str = Field(examples=["idgenrec"])
    dataset: str | None = None
    created_at: str | None = Field(None, description="when training wrote the bundle")
    catalog: str = Field(description="the Redis catalog namespace (genrec:{catalog}:)")
    generation: int = Field(description="1 for the bundle served at start, +1 each successful reload")


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    checks: dict[str, str] = Field(examples=[{"bundle": "ok", "redis": "ok"}])
    serving: ServingBundle | None = Field(None, description="the bundle serving now")


class ReloadRequest(_Strict):
    bundle: str | None = Field(
        None, min_length=1, max_length=4096,
        description="the bundle folder to serve, on the replica's file system (default: GENREC_BUNDLE, read "
        "again: a symbolic link there may point to another bundle now)",
        examples=["/bundles/ml100k-v2"],
    )


class ReloadResult(BaseModel):
    previous: ServingBundle = Field(description="the bundle that served before (closed once its requests are done)")
    serving: ServingBundle = Field(description="the bundle serving now")
    seconds: float = Field(description="how long the reload took: load, checksums, upgrade, smoke test, swap")
    items_carried_over: int = Field(description="items of the previous catalog this replica minted under the new "
                                    "one (0 when the catalog namespace did not change)")
    old_inflight: int = Field(description="requests still running on the previous bundle at the swap")


class LastReload(BaseModel):
    outcome: Literal["ok", "refused", "failed"]
    bundle: str = Field(description="the bundle folder asked for")
    seconds: float
    error: str | None = None
    finished_at: float = Field(description="unix time")
    serving: ServingBundle | None = None


class ReloadStatus(BaseModel):
    running: bool = Field(description="a reload is under way")
    running_since: float | None = Field(None, description="unix time the reload under way started")
    last: LastReload | None = Field(None, description="how the last reload ended (none since the start: null)")
    serving: ServingBundle
