"""/v1/items: minting a textual ID for a new item (idempotent per item_id, behind a write
token) and reading an item's record (open, or behind a read token)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from ..dependencies import get_state, read_access, request_deadline, require_json, write_access
from ..openapi import error_responses
from ..schemas import ItemCreated, ItemCreateRequest, ItemRecordResponse
from ..state import ServiceState

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
                      svc: ServiceState = Depends(get_state)):
    textual_id, created = await svc.create_item(body, deadline=request_deadline(request))
    if not created:
        response.status_code = 200
    return ItemCreated(item_id=body.item_id, textual_id=textual_id, created=created,
                       recommendable=svc.engine.is_recommendable(body.item_id))


@router.get(
    "/v1/items/{item_id:path}",
    response_model=ItemRecordResponse,
    responses=error_responses(401, 403, 404, 429, 503),
    summary="An item's textual ID and metadata",
    dependencies=[Depends(read_access)],
)
async def get_item(item_id: str, svc: ServiceState = Depends(get_state)):
    return await svc.get_item(item_id)
