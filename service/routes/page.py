"""The page to try the service at `/` (service/static/: HTML, CSS and a little JavaScript, no build
step, nothing from elsewhere): search the catalog, build a history, see the recommendations with
their textual IDs and scores, add an item.

It is served unless GENREC_DOCS_ACCESS=off (then 404, like the API docs). It never asks for a
token itself: a browser sends none when it opens a page, and the page holds no data. Every
call it makes goes through the API's own access checks, with the token typed into the page."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from ..dependencies import service_state
from ..errors import ApiError

STATIC = files("service") / "static"
ASSETS = {"page.css": "text/css", "page.js": "text/javascript"}  # what the page loads, and nothing else
HEADERS = {
    # Scripts, styles and requests: this service only; no inline script, no framing.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated, so an upgraded service serves its own page
}


async def page_on(request: Request) -> None:
    if service_state(request).settings.access("docs") == "off":
        raise ApiError(404, "not_found", "not found")


router = APIRouter(include_in_schema=False, dependencies=[Depends(page_on)])


@router.get("/")
async def page():
    return FileResponse(str(STATIC / "index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/page/{name}")
async def asset(name: str):
    if name not in ASSETS:
        raise ApiError(404, "not_found", "not found")
    return FileResponse(str(STATIC / name), media_type=f"{ASSETS[name]}; charset=utf-8", headers=HEADERS)
