"""GET /: the one web page (web/index.html) over every capability, its files under /static, and GET /page/config.

Caching: index.html names each of its files as `static/NAME?v=<digest of the file>`, rewritten here when the
page is served, so a file asked with its current digest is answered `immutable` for a year (a new version is a
new URL), and anything else (the page itself, a file asked without or with an old digest) is `no-cache`:
revalidated by its ETag, a 304 when nothing changed. The page holds no data itself; what the server can do
here comes from GET /page/config, so the page asks no route this server does not serve.
"""

import hashlib
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

WEB = Path(__file__).resolve().parent.parent / "web"
STATIC = WEB / "static"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# everything the page shows comes from this server; img-src also allows http(s) for the preview of an image the
# user gave by URL (the browser shows it while the server fetches it through its own guard)
POLICY = ("default-src 'self'; img-src 'self' blob: data: http: https:; object-src 'none'; base-uri 'none'; "
          "frame-ancestors 'none'; form-action 'self'")
_ASSET = re.compile(r"""(?<=["'])static/([A-Za-z0-9_.-]+)(?=["'])""")
_digests: dict[tuple, str] = {}  # (path, mtime, size) -> digest: files change only when the server is updated


def digest(path: Path) -> str | None:
    """The first 12 hex digits of the file's SHA-256, or None when it is not a file."""
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _digests:
        _digests[key] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return _digests[key]


def render_index(index: Path) -> bytes:
    """index.html with each `static/NAME` given its version, `static/NAME?v=<digest>`."""
    text = index.read_text(encoding="utf-8")

    def versioned(match: re.Match) -> str:
        version = digest(STATIC / match.group(1))
        return f"{match.group(0)}?v={version}" if version else match.group(0)

    return _ASSET.sub(versioned, text).encode("utf-8")


class VersionedStaticFiles(StaticFiles):
    """StaticFiles (ETag, Last-Modified, 304) plus Cache-Control: immutable for the current version's URL."""

    async def get_response(self, path: str, scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            asked = re.search(r"(?:^|&)v=([0-9a-f]{12})(?:&|$)", scope.get("query_string", b"").decode("latin-1"))
            current = digest(STATIC / path) if asked else None
            response.headers["Cache-Control"] = IMMUTABLE if asked and asked.group(1) == current else REVALIDATE
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def page_config(settings) -> dict:
    """What the page needs to know of this server: the capabilities it serves and their choices."""
    capabilities = list(settings.capabilities)
    config = {"capabilities": capabilities}
    if "background" in capabilities:
        config.update(background_models=list(settings.background_models),
                      background_model=settings.background_model, user_limit=settings.user_limit)
    if "search" in capabilities:
        config["search_models"] = list(settings.search_models)
    return config


def add_page(app: FastAPI) -> None:
    """GET / is LitServe's "litserve running" until web/index.html exists."""
    app.router.routes[:] = [r for r in app.router.routes if not (isinstance(r, APIRoute) and r.path == "/")]

    async def page(request: Request):
        index = WEB / "index.html"
        if not index.is_file():
            return PlainTextResponse("litserve running")
        body = render_index(index)
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        headers = {"ETag": etag, "Cache-Control": REVALIDATE, "Content-Security-Policy": POLICY,
                   "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="text/html; charset=utf-8", headers=headers)

    async def config(request: Request):
        return JSONResponse(page_config(request.app.state.settings), headers={"Cache-Control": REVALIDATE})

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/page/config", config, methods=["GET"], include_in_schema=False)
    app.mount("/static", VersionedStaticFiles(directory=STATIC, check_dir=False), name="static")
