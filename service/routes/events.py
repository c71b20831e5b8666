"""Users' interactions: POST /v1/events stores a batch of them (behind a write token), GET
/v1/users/{user_id}/events reads a user's stored history, which recommendations by user_id use."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from ..dependencies import read_access, require_json, serving, write_access
from ..generation import Generation
from ..openapi import error_responses
from ..schemas import EventsAccepted, EventsRequest, UserEventsResponse

router = APIRouter(tags=["users"])

# A user id in a path: what UserId allows in a body (1 to 256 characters, no control characters).
_USER_ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"


@router.post(
    "/v1/events",
    response_model=EventsAccepted,
    responses=error_responses(400, 401, 403, 413, 415, 422, 429, 503),
    summary="Store users' interactions (a batch; idempotent per event_id)",
    dependencies=[Depends(write_access), Depends(require_json)],
)
async def add_events(body: EventsRequest, svc: Generation = Depends(serving)):
    return await svc.add_events(body)


@router.get(
    "/v1/users/{user_id:path}/events",
    response_model=UserEventsResponse,
    responses=error_responses(401, 403, 404, 422, 429, 503),
    summary="A user's stored interactions, oldest first",
    dependencies=[Depends(read_access)],
)
async def user_events(
    user_id: Annotated[str, Path(min_length=1, max_length=256, pattern=_USER_ID_PATTERN)],
    svc: Generation = Depends(serving),
):
    return await svc.user_events(user_id)
