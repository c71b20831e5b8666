"""The API's documents: /openapi.json, Swagger UI at /docs and ReDoc at /redoc, open, behind a
read token, or off (GENREC_DOCS_ACCESS). The pages load their JavaScript and CSS from this
service (the files of the `fastapi-offline` package, Swagger UI 5 and ReDoc 2), not from a CDN,
so they work on a network without internet access."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse

from ..dependencies import guarded
from ..errors import ApiError

router = APIRouter(include_in_schema=False, dependencies=[Depends(guarded("docs"))])

STATIC = files("fastapi_offline") / "static"
ASSETS = {  # what the pages load, and nothing else
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


@router.get("/openapi.json")
async def openapi(request: Request):
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def swagger_ui(request: Request):
    root, assets = _paths(request)
    return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{request.app.title} - Swagger UI",
                               swagger_js_url=f"{assets}/swagger-ui-bundle.js", swagger_css_url=f"{assets}/swagger-ui.css",
                               swagger_favicon_url=f"{assets}/favicon.png")


@router.get("/redoc")
async def redoc(request: Request):
    root, assets = _paths(request)
    return get_redoc_html(openapi_url=f"{root}/openapi.json", title=f"{request.app.title} - ReDoc",
                          redoc_js_url=f"{assets}/redoc.standalone.js", redoc_favicon_url=f"{assets}/favicon.png",
                          with_google_fonts=False)


def _paths(request: Request) -> tuple[str, str]:
    """The app's root path (behind a proxy that mounts it below one) and where the assets are."""
    root = request.scope.get("root_path", "")
    return root, f"{root}/docs/assets"


@router.get("/docs/assets/{name}")
async def asset(name: str):
    if name not in ASSETS:
        raise ApiError(404, "not_found", "not found")
    return FileResponse(str(STATIC / name), media_type=ASSETS[name],
                        headers={"Cache-Control": "public, max-age=86400"})
