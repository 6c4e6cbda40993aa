"""GET /docs: Swagger UI over /openapi.json, from the files the `openapi-ui-bundles` package installs
(no CDN: the server runs offline). Every URL in the page is relative, so it also works behind a
reverse proxy that serves the API under a prefix; a Content-Security-Policy keeps it same-origin."""
from __future__ import annotations

import functools
from pathlib import PurePath

from aiohttp import web
from openapi_ui_bundles import swagger_ui

# The package's files the page loads, and the one this module writes.
_VENDOR = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png")
_INITIALIZER = "swagger-initializer.js"
MEDIA_TYPES = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}
ASSETS = frozenset((*_VENDOR, _INITIALIZER))
DOCUMENT_PATHS = ("/openapi.json", "/api-doc/openapi.json")
# Paths served without credentials: the document and its page reveal no secret.
DOC_PATHS = frozenset((*DOCUMENT_PATHS, "/docs", *(f"/docs/{name}" for name in ASSETS)))
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ortembed API</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="docs/favicon-16x16.png" sizes="16x16">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/swagger-initializer.js"></script>
</body>
</html>
"""
# validatorUrl: null: Swagger UI would otherwise load a badge from a public validator.
_SCRIPT = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: new URL("openapi.json", document.baseURI).href,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
};
"""


@functools.lru_cache(maxsize=len(ASSETS))
def asset(name: str) -> tuple[bytes, str]:
    """(content, media type) of one asset, read once."""
    if name == _INITIALIZER:
        return _SCRIPT.encode(), MEDIA_TYPES[".js"]
    return (swagger_ui.static_path / name).read_bytes(), MEDIA_TYPES[PurePath(name).suffix]


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=_PAGE, content_type="text/html", headers={"Content-Security-Policy": CSP})


async def docs_asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    body, media_type = asset(name)
    return web.Response(body=body, content_type=media_type, headers={"Cache-Control": "public, max-age=3600"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/docs", docs)
    app.router.add_get("/docs/{asset}", docs_asset)
