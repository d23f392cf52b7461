"""GET /docs (Swagger UI) and GET /redoc (ReDoc) with their JavaScript and CSS served by this server.

FastAPI's own pages load them from a CDN, so they were blank offline. The assets come from the
fastapi-offline wheel (its static folder: swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js),
served under /docs-assets; no font or script is fetched from elsewhere.
"""

from importlib.util import find_spec
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"
# the wheel's files only: importing fastapi_offline itself is not needed
ASSETS = Path(find_spec("fastapi_offline").origin).parent / "static"
TITLE = "imageserver"


def add_docs_pages(app: FastAPI) -> None:
    """Replaces the CDN-backed /docs and /redoc (and Swagger's OAuth2 redirect page, unused here)."""
    app.router.routes[:] = [r for r in app.router.routes
                            if getattr(r, "path", None) not in ("/docs", "/docs/oauth2-redirect", "/redoc")]
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="docs-assets")

    async def swagger_ui(request: Request):
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json", title=f"{TITLE} - Swagger UI", oauth2_redirect_url=None,
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png")

    async def redoc(request: Request):
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}/openapi.json", title=f"{TITLE} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png", with_google_fonts=False)

    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)
