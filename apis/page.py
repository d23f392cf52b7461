"""GET /: the web page (web/index.html) and its assets under /static, served as files."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

WEB = Path(__file__).resolve().parent.parent / "web"


def add_page(app: FastAPI) -> None:
    """GET / is LitServe's "litserve running" until web/index.html exists; the page holds no data itself."""
    app.router.routes[:] = [r for r in app.router.routes if not (isinstance(r, APIRoute) and r.path == "/")]

    async def page():
        index = WEB / "index.html"
        if index.is_file():
            return FileResponse(index, media_type="text/html")
        return PlainTextResponse("litserve running")

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=WEB / "static", check_dir=False), name="static")
