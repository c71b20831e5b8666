"""/v1/items: minting a textual ID for a new item (idempotent per item_id, behind a write
token), searching the catalog by title and reading an item's record (open, or behind a read
token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from ..dependencies import read_access, request_deadline, require_json, serving, write_access
from ..generation import Generation
from ..openapi import error_responses
from ..schemas import SEARCH_MAX_LIMIT, ItemCreated, ItemCreateRequest, ItemRecordResponse, ItemSearchResponse

router = APIRouter(tags=["items"])

# Declared in the OpenAPI document: the item_id an answer names reads the item's record (stateful
# tools such as schemathesis follow it).
_READ_IT = {"GetItem": {"operationRef": "#/paths/~1v1~1items~1{item_id}/get",
                        "parameters": {"item_id": "$response.body#/item_id"},
                        "description": "the item's record"}}


@router.post(
    "/v1/items",
    response_model=ItemCreated,
    status_code=201,
    responses={201: {"description": "minted: the item's new ID", "links": _READ_IT},
               200: {"model": ItemCreated, "description": "the item existed, with the same metadata: its ID",
                     "links": _READ_IT},
               **error_responses(400, 401, 403, 409, 413, 415, 422, 429, 503)},
    summary="Mint a unique textual ID for a new item (idempotent per item_id and metadata)",
    dependencies=[Depends(write_access), Depends(require_json)],
)
async def create_item(body: ItemCreateRequest, request: Request, response: Response,
                      svc: Generation = Depends(serving)):
    textual_id, created = await svc.create_item(body, deadline=request_deadline(request))
    if not created:
        response.status_code = 200
    return ItemCreated(item_id=body.item_id, textual_id=textual_id, created=created,
                       recommendable=svc.engine.is_recommendable(body.item_id))


@router.get(  # before /v1/items/{item_id:path}, which would not match it anyway (no slash)
    "/v1/items",
    response_model=ItemSearchResponse,
    responses=error_responses(401, 403, 422, 429, 503),
    summary="Search the catalog by title",
    description="Items whose titles have, for every word of `q`, a word that begins with it (case-insensitive; "
    "words are runs of letters and digits), in catalog order: the bundle's items, then the minted ones.",
    dependencies=[Depends(read_access)],
)
async def search_items(
    q: Annotated[str, Query(min_length=1, max_length=200, description="title words or their beginnings",
                            examples=["star wa"])],
    limit: Annotated[int, Query(ge=1, le=SEARCH_MAX_LIMIT, description="most items to return")] = 20,
    svc: Generation = Depends(serving),
):
    return svc.search_items(q, limit)


@router.get(
    "/v1/items/{item_id:path}",
    response_model=ItemRecordResponse,
    responses=error_responses(401, 403, 404, 429, 503),
    summary="An item's textual ID and metadata",
    dependencies=[Depends(read_access)],
)
async def get_item(item_id: str, svc: Generation = Depends(serving)):
    return await svc.get_item(item_id)
