"""The playground page: talk to this server from a browser (WebRTC, microphone).

`GET /playground` serves a static page (no build step, no CDN) that mints an ephemeral key with
`POST /v1/realtime/client_secrets`, opens a WebRTC call with `POST /v1/realtime/calls`, and
shows the live transcript and the event log.  `GET /playground/{asset}` serves its script and
style sheet (only those known names, so no path ever reaches the file system from the URL), and
`GET /` redirects to the page.  The router is only included when `settings.playground` is true.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent / "static"
# The only files served: URL name -> media type.
ASSETS = {
    "playground.js": "text/javascript",
    "playground.css": "text/css",
}
_HEADERS = {
    "Cache-Control": "no-cache",  # revalidate (ETag) so an upgraded server never runs a stale script
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/playground", status_code=307)


@router.get("/playground")
async def page() -> FileResponse:
    return FileResponse(STATIC / "playground.html", media_type="text/html", headers=_HEADERS)


@router.get("/playground/{asset}")
async def asset(asset: str) -> FileResponse:
    media_type = ASSETS.get(asset)
    if media_type is None:
        raise HTTPException(status_code=404, detail="Not Found")
    return FileResponse(STATIC / asset, media_type=media_type, headers=_HEADERS)
