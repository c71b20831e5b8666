"""POST /v1/recommendations: the top-k next items for a history, decoded in micro-batches."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..dependencies import get_state, require_json
from ..openapi import error_responses
from ..schemas import RecommendationRequest, RecommendationResponse
from ..state import ServiceState

router = APIRouter(tags=["recommendations"])


@router.post(
    "/v1/recommendations",
    response_model=RecommendationResponse,
    responses=error_responses(400, 413, 415, 422, 503),
    summary="Top-k next items for a history",
    dependencies=[Depends(require_json)],
)
async def recommendations(body: RecommendationRequest, svc: ServiceState = Depends(get_state)):
    return await svc.recommend(body)
