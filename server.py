"""One LitServe server hosting every capability's LitAPI. Configuration: environment variables (README)."""

import os
import shutil
import signal
import sys

import litserve as ls

from apis.analyze import AnalyzeAPI
from apis.auth import ApiKeyMiddleware
from apis.body_limit import BodyLimitMiddleware
from apis.edge import RequestIdMiddleware, UnforeseenErrorMiddleware
from apis.embed import EmbedAPI
from apis.docs_pages import add_docs_pages
from apis.error_shapes import install_error_handlers
from apis.handoff import Handoff
from apis.metrics import HttpMetrics, add_metrics_route
from apis.identity import UserCookieMiddleware
from apis.analyze_routes import ALIASES, PathAliasMiddleware, add_operation_routes
from apis.background import BACKGROUND_PATHS, BackgroundAPI, check_background_settings
from apis.records import add_background_routes, replace_health_route
from apis.search import SEARCH_PATHS, SearchAPI
from apis.openapi_doc import install as install_openapi
from apis.originals import add_original_routes
from apis.page import add_page
from apis.search_routes import add_search_routes
from apis.serving import ImageServer, RequestClock
from apis.stats import StatsAPI
from settings import Settings, SettingsError, load_settings
from store.open import PerProcess, check_store_settings
from telemetry import logs, metrics


def resolve_accelerator(choice: str) -> str:
    """auto -> cuda when a CUDA device is visible, else cpu; cuda without a device is a start-up error."""
    if choice == "cpu":
        return "cpu"
    has_gpu = False
    if shutil.which("nvidia-smi"):
        import torch

        has_gpu = torch.cuda.is_available()
    if choice == "cuda" and not has_gpu:
        raise SettingsError("ACCELERATOR='cuda': no CUDA device is visible; use auto or cpu")
    return "cuda" if has_gpu else "cpu"


def build_server(settings: Settings) -> ls.LitServer:
    if {"search", "background"} & set(settings.capabilities):
        check_store_settings(settings)
    if "background" in settings.capabilities:
        check_background_settings(settings)
    handoff = Handoff()
    status_dir = os.path.join(handoff.directory, "model-status")
    os.makedirs(status_dir, exist_ok=True)
    available = {
        "stats": lambda: StatsAPI(settings),
        "analyze": lambda: AnalyzeAPI(settings, status_dir),
        "embed": lambda: EmbedAPI(settings, status_dir),
        "search": lambda: SearchAPI(settings),
        "background": lambda: BackgroundAPI(settings),
    }
    apis = [available[name]() for name in settings.capabilities]
    for name, api in zip(settings.capabilities, apis):
        api.capability = name  # the label of its metrics
    queue_limits = {api.api_path: (getattr(settings, f"{name}_max_queue"), f"{name.upper()}_MAX_QUEUE")
                    for name, api in zip(settings.capabilities, apis)}
    server = ImageServer(
        apis,
        queue_limits=queue_limits,
        gated_paths={"/stats": "/stats", "/analyze": "/analyze", "/embed": "/embed",
                     **{path: "/add" for path in SEARCH_PATHS},
                     **{path: "/remove-background" for path in BACKGROUND_PATHS}},
        accelerator=resolve_accelerator(settings.accelerator),
        workers_per_device=settings.workers_per_device,
        timeout=settings.request_timeout,
        middlewares=[
            (BodyLimitMiddleware, {"max_bytes": settings.max_upload_bytes}),
            (PathAliasMiddleware, {"aliases": ALIASES}),
            # the user id of the signed cookie, for the gallery records (apis/identity.py)
            *([(UserCookieMiddleware, {"secret_key": getattr(settings, "secret_key", None),
                                       "data_dir": settings.data_dir})]
              if "background" in settings.capabilities else []),
            # each later one wraps the earlier: the key is checked before any body is read, a failure of
            # anything inside is answered as JSON, and every answer carries its request id
            (ApiKeyMiddleware, {"api_key": settings.api_key, "public_routes": settings.public_routes}),
            UnforeseenErrorMiddleware,
            (HttpMetrics, {"aliases": ALIASES}),  # inside the request id: its access line names the request
            RequestIdMiddleware,
            RequestClock,
        ],
        callbacks=[logs.WorkerLogging(settings.log_level, settings.log_format)],
    )
    # read by the request-body dependencies in the HTTP processes
    server.app.state.settings = settings
    server.app.state.handoff = handoff
    install_error_handlers(server.app)  # every route's errors in its own shape, whatever the capabilities
    if {"analyze", "embed"} & set(settings.capabilities):
        add_operation_routes(server.app, status_dir, apis[0].authorize)
    if {"search", "background"} & set(settings.capabilities):
        server.app.state.library = PerProcess(settings)  # the index and originals, opened on first use
    if "search" in settings.capabilities:
        add_search_routes(server.app, settings, apis[0].authorize)
        add_original_routes(server.app, apis[0].authorize)
    add_page(server.app)  # GET / for every capability set; before the gallery form's POST / (add_page drops "/")
    if "background" in settings.capabilities:
        background = apis[settings.capabilities.index("background")]
        add_background_routes(server.app, settings, background.authorize)
    replace_health_route(server.app)  # {"status": "Healthy"} once the workers are ready
    if settings.metrics:
        add_metrics_route(server.app, server, {api.api_path: api.capability for api in apis})
    add_docs_pages(server.app)  # /docs and /redoc with their assets served here, not from a CDN
    install_openapi(server.app, settings)  # after every route: it documents the routes this app has
    return server


def shutdown_on_sigterm() -> None:
    """SIGTERM (docker stop, systemd, kill) takes the same graceful path as Ctrl+C.

    Python's default SIGTERM ends the process on the spot: LitServe's shutdown never runs, its HTTP and
    worker processes may outlive us and the /dev/shm hand-off folder is left behind. Child processes
    that inherit the handler keep the default behaviour.
    """
    main_pid = os.getpid()

    def interrupt(signum, frame):
        if os.getpid() != main_pid:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main() -> None:
    try:
        settings = load_settings()
        server = build_server(settings)
    except SettingsError as exc:
        logs.startup_failure(f"configuration error: {exc}")
        sys.exit(2)
    logs.configure(settings.log_level, settings.log_format)
    if settings.metrics:  # before any worker or HTTP process starts: they inherit it (telemetry/metrics.py)
        metrics.enable(os.path.join(server.app.state.handoff.directory, "metrics"))
        metrics.start(settings.capabilities)
    shutdown_on_sigterm()
    try:
        server.run(
            host=settings.host,
            port=settings.port,
            num_api_servers=settings.num_api_servers,
            log_level=settings.log_level.lower(),
            generate_client_file=False,
            # uvicorn's lines through our handler (log_config=None: no dictConfig of its own); the access
            # line is apis/metrics.py's, with the request id and the time taken
            log_config=None,
            access_log=False,
        )
    finally:
        server.app.state.handoff.close()


if __name__ == "__main__":
    main()
