"""Routes beside the LitAPIs: GET /available_operations/ and /analyze's path aliases."""

from fastapi import Depends, FastAPI

from analysis.operations import catalogue
from apis.model_status import read_counters, read_status

# the paths /analyze's existing clients call; both take the same JSON or multipart body as /analyze
ALIASES = {"/analyze_image/": "/analyze", "/analyze_image": "/analyze",
           "/analyze_image_upload/": "/analyze", "/analyze_image_upload": "/analyze", "/analyze/": "/analyze"}


class PathAliasMiddleware:
    """Pure ASGI: rewrites an alias path before routing, so the alias gets the real route's batching."""

    def __init__(self, app, aliases: dict[str, str]):
        self.app = app
        self.aliases = aliases

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in self.aliases:
            scope = {**scope, "path": self.aliases[scope["path"]], "raw_path": self.aliases[scope["path"]].encode()}
        await self.app(scope, receive, send)


def add_operation_routes(app: FastAPI, status_dir: str, auth) -> None:
    async def available_operations():
        return catalogue(read_status(status_dir))

    async def model_stats():
        """Per model: forward calls and images so far, summed over workers (mean_batch = images per call)."""
        return {"models": read_counters(status_dir), "availability": read_status(status_dir)}

    for path in ("/available_operations/", "/available_operations"):
        app.add_api_route(path, available_operations, methods=["GET"], dependencies=[Depends(auth)],
                          include_in_schema=path.endswith("/"))
    app.add_api_route("/model_stats", model_stats, methods=["GET"], dependencies=[Depends(auth)])
