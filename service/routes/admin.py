"""/admin: operations on a running replica, behind a token with the admin scope (404 when no
token has it). `POST /admin/reload` swaps in another bundle without downtime
(service/reload.py); `GET /admin/reload` says whether one runs and how the last one ended."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends

from ..dependencies import get_state, guarded, require_json
from ..errors import ErrorResponse
from ..openapi import error_responses
from ..schemas import ReloadRequest, ReloadResult, ReloadStatus
from ..state import ServiceState

router = APIRouter(tags=["operations"])

_RELOAD_ERRORS = {
    **error_responses(400, 401, 403, 404, 413, 415, 503),
    409: {"model": ErrorResponse, "description": "a reload is already running (reload_in_progress)"},
    422: {"model": ErrorResponse, "description": "invalid body, or a bundle that cannot serve (bad_bundle; details."
          "stage: verify, load or smoke): nothing changed, the bundle in place goes on serving"},
}


@router.post(
    "/admin/reload",
    response_model=ReloadResult,
    responses=_RELOAD_ERRORS,
    summary="Serve another bundle (or GENREC_BUNDLE again) without downtime",
    description="Loads the bundle beside the one serving, verifies its checksums, carries over the previous "
    "catalog's items when its catalog namespace is new, runs a smoke recommendation, then swaps it in atomically; "
    "requests under way finish on the old bundle. Answers once the new bundle serves. One reload at a time.",
    dependencies=[Depends(guarded("admin")), Depends(require_json)],
)
async def reload(body: ReloadRequest | None = Body(None), svc: ServiceState = Depends(get_state)):
    return await svc.reloader.reload(body.bundle if body is not None else None)


@router.get(
    "/admin/reload",
    response_model=ReloadStatus,
    responses=error_responses(401, 403, 404, 503),
    summary="Whether a reload runs, how the last one ended, and which bundle serves",
    dependencies=[Depends(guarded("admin"))],
)
async def reload_status(svc: ServiceState = Depends(get_state)):
    return {**svc.reloader.status(), "serving": svc.generation.describe()}
