"""What operators and orchestrators poll: liveness, readiness and Prometheus metrics. These
answer whether or not the service is ready, so they take the state as it is. /metrics is open,
behind a read token, or off (GENREC_METRICS_ACCESS)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from ..dependencies import guarded, service_state
from ..errors import ApiError
from ..openapi import error_responses
from ..schemas import Health, Readiness
from ..state import ServiceState

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, responses=error_responses(), summary="The process is alive")
async def healthz():
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses=error_responses(503),
    summary="Bundle loaded and Redis answering; which bundle serves",
)
async def readyz(svc: ServiceState = Depends(service_state)):
    checks = await svc.readiness()
    failing = {name: value for name, value in checks.items() if value != "ok"}
    if failing:
        message = "; ".join(f"{name}: {value}" for name, value in failing.items())
        raise ApiError(503, "not_ready", message, {"checks": checks})
    generation = svc.generation
    return Readiness(status="ready", checks=checks, serving={**generation.describe(), "path": None} if generation else None)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                     "description": "Prometheus text exposition format"}, **error_responses(401, 404, 429)},
    dependencies=[Depends(guarded("metrics"))],
)
async def metrics(svc: ServiceState = Depends(service_state)):
    body, content_type = svc.metrics.render()
    return Response(body, media_type=content_type)
