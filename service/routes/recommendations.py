"""POST /v1/recommendations: the top-k next items for a history (given, or the user's stored
events), decoded in micro-batches; an empty one gets the bundle's most popular items."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ..access import charge, recommendation_cost
from ..dependencies import client_gone, read_access, request_deadline, require_json, service_state, serving
from ..generation import Generation
from ..openapi import error_responses
from ..schemas import RecommendationRequest, RecommendationResponse
from ..settings import ApiKey

router = APIRouter(tags=["recommendations"])


@router.post(
    "/v1/recommendations",
    response_model=RecommendationResponse,
    responses=error_responses(400, 401, 403, 413, 415, 422, 429, 499, 503),
    summary="Top-k next items for a history, or a user's stored one",
    dependencies=[Depends(read_access), Depends(require_json)],  # the token first; `key` below reuses its answer
)
async def recommendations(body: RecommendationRequest, request: Request, svc: Generation = Depends(serving),
                          key: ApiKey | None = Depends(read_access)):
    # read_access counted one unit; a larger k costs more beams, and more of the quota.
    await charge(request, service_state(request), "read", key, recommendation_cost(body.k) - 1)
    async with client_gone(request) as gone:
        return await svc.recommend(body, deadline=request_deadline(request), gone=gone)
