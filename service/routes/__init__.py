"""The API's routes, one `APIRouter` a concern; `create_app` includes them in this order (which is
also their order in the OpenAPI document)."""

from __future__ import annotations

from . import admin, events, items, operations, recommendations

ROUTERS = (recommendations.router, events.router, items.router, operations.router, admin.router)

__all__ = ["ROUTERS"]
