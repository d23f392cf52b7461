"""Server configuration, read once from environment variables.

Every variable is listed in `VARIABLES` with its default and what it accepts; the README table is
written from the same facts. A bad value stops start-up with one line naming the variable.
"""

import os
import re
from dataclasses import dataclass, fields
from dataclasses import field as _field
from urllib.parse import urlsplit

from images.decode import DEFAULT_FORMATS, FORMATS, DecodeLimits
from images.fetch import FetchPolicy, parse_networks

AVERAGING_METHODS = ("arithmetic", "geometric", "harmonic")
ACCELERATORS = ("auto", "cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
CAPABILITIES = ("stats", "analyze", "embed", "search", "background")
STORE_BACKENDS = ("sqlite", "elasticsearch")
REFRESH_POLICIES = ("wait_for", "true", "false")
IMAGE_FORMATS = FORMATS  # what IMAGE_FORMATS may name: ICO and ICNS are opt-in
DEFAULT_IMAGE_FORMATS = DEFAULT_FORMATS

TRUE_WORDS = ("1", "true", "yes", "on")  # how a yes/no is written, in a variable or a request field
FALSE_WORDS = ("0", "false", "no", "off")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


class SettingsError(ValueError):
    """A variable holds a value the server cannot run with; the message names it."""


def _int(name, raw, low=None, high=None):
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected an integer") from None
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise SettingsError(f"{name}={raw!r}: expected an integer {bounds}")
    return value


def _float(name, raw, low=0.0):
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number of seconds") from None
    if not value >= low:  # also rejects nan
        raise SettingsError(f"{name}={raw!r}: expected a number >= {low}")
    return value


def _choice(name, raw, choices, upper=False):
    value = raw.strip().upper() if upper else raw.strip().lower()
    if value not in choices:
        raise SettingsError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return value


def _bytes(name, raw):
    match = _SIZE.match(raw)
    if not match:
        raise SettingsError(f"{name}={raw!r}: expected a byte count such as 25000000, 25MB or 24MiB")
    unit = (match.group(2) or "").lower().rstrip("b")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value < 1:
        raise SettingsError(f"{name}={raw!r}: expected a byte count >= 1")
    return value


def _subset(name, raw, allowed, upper=False):
    chosen = tuple(p.strip().upper() if upper else p.strip().lower() for p in raw.split(",") if p.strip())
    unknown = [c for c in chosen if c not in allowed]
    if not chosen or unknown:
        raise SettingsError(f"{name}={raw!r}: expected a comma-separated subset of {', '.join(allowed)}")
    return tuple(dict.fromkeys(chosen))


def _formats(name, raw):
    return _subset(name, raw, IMAGE_FORMATS, upper=True)


def _ratio(name, raw):
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a ratio such as 50") from None
    if not 1.0 <= value < float("inf"):  # also rejects nan
        raise SettingsError(f"{name}={raw!r}: expected a ratio >= 1")
    return value


def truth(text: str) -> bool | None:
    """True or False for one of TRUE_WORDS or FALSE_WORDS (any case, spaces around), else None."""
    value = text.strip().lower()
    return True if value in TRUE_WORDS else False if value in FALSE_WORDS else None


def _bool(name, raw):
    value = truth(raw)
    if value is None:
        raise SettingsError(f"{name}={raw!r}: expected true or false")
    return value


def _url(name, raw):
    value = raw.strip()
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name}={raw!r}: expected an http(s) URL such as http://127.0.0.1:9200")
    return value


# Elasticsearch's rules for index names: lowercase; no space, colon or any of \ / * ? " < > | , #; not starting with - _ +
_INDEX = re.compile(r"^(?![-_+])[^A-Z\\/*?\"<>|,# :]{1,255}$")


def _index_name(name, raw):
    value = raw.strip()
    if not _INDEX.match(value) or value in (".", ".."):
        raise SettingsError(f"{name}={raw!r}: expected an Elasticsearch index name (lowercase, no space or \\/*?\"<>|,#:)")
    return value


def _routes(name, raw):
    """Comma-separated paths, each exact or ending in * (a prefix); `none` for no public route."""
    if raw.strip().lower() == "none":
        return ()
    routes = tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
    if not routes or any(not r.startswith("/") or any(c.isspace() for c in r) or "*" in r[:-1] for r in routes):
        raise SettingsError(f"{name}={raw!r}: expected paths such as /health,/info,/static/* (or none)")
    return routes


def _models(name, raw):
    """A comma list of the catalogue's embedders, or `none` for signatures only."""
    if raw.strip().lower() == "none":
        return ()
    return _subset(name, raw, _embedders())


def _segmenter(name, raw):
    """One segmenter of the catalogue."""
    value = raw.strip().lower()
    if value not in _segmenters():
        raise SettingsError(f"{name}={raw!r}: expected one of {', '.join(_segmenters())}")
    return value


def _segmenters_list(name, raw):
    return _subset(name, raw, _segmenters())


def _segmenters() -> tuple[str, ...]:
    # asked of the catalogue only when BACKGROUND_MODEL(S) is set, as for SEARCH_MODELS
    from models.catalogue import names

    return names("segmenter")


def _embedders() -> tuple[str, ...]:
    # asked of the catalogue only when SEARCH_MODELS is set: settings otherwise knows no model
    from models.catalogue import names

    return names("embedder")


def _networks(name, raw):
    try:
        return parse_networks(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r}: expected CIDRs, comma-separated ({exc})") from None


def _secret(name, raw):
    value = raw.strip()
    if len(value) < 16:
        raise SettingsError(f"{name}={raw!r}: expected at least 16 characters of secret text")
    return value


@dataclass(frozen=True)
class Settings:
    port: int = 8010
    host: str = "0.0.0.0"
    log_level: str = "INFO"
    log_format: str = "text"  # text, or json: one JSON object per line (telemetry/logs.py)
    metrics: bool = True  # GET /metrics (telemetry/metrics.py, apis/metrics.py)
    num_api_servers: int = 1
    workers_per_device: int = 1
    torch_threads: int = 0  # 0: cores // workers_per_device (models/runtime.py)
    accelerator: str = "auto"
    request_timeout: float = 30.0
    api_key: str | None = None
    secret_key: str | None = _field(default=None, repr=False)  # signs the user cookie (apis/identity.py); unset: DATA_DIR/secret_key
    public_routes: tuple[str, ...] = ("/health",)  # answered without API_KEY (apis/auth.py)
    capabilities: tuple[str, ...] = CAPABILITIES
    cache_dir: str = os.path.join(os.path.expanduser("~"), ".cache", "imageserver")
    averaging_method: str = "arithmetic"
    thumbnail_size: int = 512
    stats_max_batch_size: int = 1
    stats_batch_timeout: float = 0.005
    max_upload_bytes: int = 25 * 1024**2
    max_image_pixels: int = 64_000_000
    max_json_depth: int = 32  # nesting of any JSON a client sends (apis/request_body.py)
    max_tasks: int = 64  # tasks in one /analyze request
    image_formats: tuple[str, ...] = DEFAULT_IMAGE_FORMATS
    max_image_aspect: float = 50.0
    max_image_frames: int = 1000
    max_jpeg_scans: int = 100
    max_jpeg_scan_pixels: int = 400_000_000
    fetch_timeout: float = 10.0
    fetch_max_bytes: int = 25 * 1024**2
    fetch_max_redirects: int = 5
    fetch_allow_networks: tuple = ()
    model_dir: str = os.path.join(os.path.expanduser("~"), ".cache", "imageserver", "models")
    allow_downloads: bool = True
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"
    dino_model: str = "facebook/dinov2-base"
    caption_model: str = "Salesforce/blip-image-captioning-base"
    person_weights: str = "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
    person_min_size: int = 800
    classifier_dir: str | None = None  # default MODEL_DIR/classifiers
    background_custom_model: str | None = None  # the u2net_custom segmenter's .onnx (models/background.py)
    analyze_max_batch_size: int = 8
    analyze_batch_timeout: float = 0.01
    embed_max_batch_size: int = 8
    embed_batch_timeout: float = 0.01
    store_backend: str = "sqlite"
    data_dir: str = os.path.join(os.path.expanduser("~"), ".local", "share", "imageserver")
    elasticsearch_url: str | None = None
    elasticsearch_index: str = "images"
    elasticsearch_timeout: float = 10.0
    elasticsearch_refresh: str = "wait_for"
    search_models: tuple[str, ...] = ("mobilenet_v2",)
    search_max_batch_size: int = 8
    search_batch_timeout: float = 0.01
    # requests queued or in work per capability before 503 + Retry-After (apis/serving.py)
    stats_max_queue: int = 256
    analyze_max_queue: int = 32
    embed_max_queue: int = 64
    search_max_queue: int = 64
    background_model: str = "u2net"  # the segmenter a request without `model` gets
    background_models: tuple[str, ...] = ("u2net", "u2netp")  # what the background workers load
    background_max_batch_size: int = 4
    background_batch_timeout: float = 0.01
    background_max_queue: int = 32
    user_limit: int = 50  # gallery records per user (background removal's records)

    @property
    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(
            max_bytes=self.max_upload_bytes, max_pixels=self.max_image_pixels, formats=self.image_formats,
            max_aspect=self.max_image_aspect, max_frames=self.max_image_frames, max_jpeg_scans=self.max_jpeg_scans,
            max_jpeg_scan_pixels=self.max_jpeg_scan_pixels,
        )

    @property
    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(
            timeout=self.fetch_timeout,
            max_bytes=self.fetch_max_bytes,
            max_redirects=self.fetch_max_redirects,
            allow_networks=self.fetch_allow_networks,
        )


# variable -> (field, parser, what it accepts, what it does); parsers take (name, raw text)
VARIABLES = {
    "PORT": ("port", lambda n, r: _int(n, r, 1, 65535), "1-65535", "HTTP port"),
    "HOST": ("host", lambda n, r: r.strip(), "an address", "interface to listen on"),
    "LOG_LEVEL": ("log_level", lambda n, r: _choice(n, r, LOG_LEVELS, upper=True), "|".join(LOG_LEVELS), "log level"),
    "LOG_FORMAT": (
        "log_format", lambda n, r: _choice(n, r, LOG_FORMATS), "|".join(LOG_FORMATS),
        "log lines as text, or one JSON object per line; both carry the request id",
    ),
    "METRICS": ("metrics", _bool, "true|false", "serve Prometheus metrics at GET /metrics"),
    "NUM_API_SERVERS": ("num_api_servers", lambda n, r: _int(n, r, 1, 64), "1-64", "HTTP front-end processes"),
    "WORKERS_PER_DEVICE": ("workers_per_device", lambda n, r: _int(n, r, 1, 64), "1-64", "inference workers per device"),
    "TORCH_THREADS": (
        "torch_threads", lambda n, r: _int(n, r, 0, 256), "0-256", "torch threads per model worker; 0: cores / (WORKERS_PER_DEVICE x model capabilities)",
    ),
    "ACCELERATOR": ("accelerator", lambda n, r: _choice(n, r, ACCELERATORS), "|".join(ACCELERATORS), "where models run"),
    "REQUEST_TIMEOUT": (
        "request_timeout", lambda n, r: _float(n, r, 0.1), "seconds", "longest time for a whole request (504)",
    ),
    "CAPABILITIES": ("capabilities", lambda n, r: _subset(n, r, CAPABILITIES), ",".join(CAPABILITIES), "endpoints to serve"),
    "API_KEY": ("api_key", lambda n, r: r or None, "any string", "if set, every request needs X-API-Key"),
    "SECRET_KEY": (
        "secret_key", _secret, "secret text, 16+ characters",
        "signs the user cookie; unset: generated once into DATA_DIR/secret_key",
    ),
    "PUBLIC_ROUTES": (
        "public_routes", _routes, "paths, comma-separated (/static/* a prefix) or none", "routes that need no API_KEY",
    ),
    "CACHE_DIR": ("cache_dir", lambda n, r: os.path.expanduser(r.strip()), "a directory", "derived tables kept between runs"),
    "AVERAGING_METHOD": (
        "averaging_method", lambda n, r: _choice(n, r, AVERAGING_METHODS), "|".join(AVERAGING_METHODS),
        "default average-colour method",
    ),
    "THUMBNAIL_SIZE": ("thumbnail_size", lambda n, r: _int(n, r, 16, 8192), "16-8192", "colour is computed at this size"),
    "STATS_MAX_BATCH_SIZE": ("stats_max_batch_size", lambda n, r: _int(n, r, 1, 256), "1-256", "/stats batch size"),
    "STATS_BATCH_TIMEOUT": (
        "stats_batch_timeout", lambda n, r: _float(n, r, 0.0), "seconds", "/stats wait to fill a batch",
    ),
    "MAX_UPLOAD_BYTES": ("max_upload_bytes", _bytes, "bytes (25MB, 24MiB)", "largest request body (413)"),
    "MAX_IMAGE_PIXELS": ("max_image_pixels", lambda n, r: _int(n, r, 1), "pixels", "largest image, checked before decoding (413)"),
    "MAX_JSON_DEPTH": ("max_json_depth", lambda n, r: _int(n, r, 2, 512), "2-512", "deepest nesting of client JSON (400)"),
    "MAX_TASKS": ("max_tasks", lambda n, r: _int(n, r, 1, 1024), "1-1024", "tasks in one /analyze request (422)"),
    "IMAGE_FORMATS": ("image_formats", _formats, ",".join(IMAGE_FORMATS), "formats accepted (415 otherwise)"),
    "MAX_IMAGE_ASPECT": ("max_image_aspect", _ratio, "a ratio >= 1", "longest side / shortest side (413)"),
    "MAX_IMAGE_FRAMES": (
        "max_image_frames", lambda n, r: _int(n, r, 1), "frames", "frames of an animation, pages, icons in an ICO (413)",
    ),
    "MAX_JPEG_SCANS": ("max_jpeg_scans", lambda n, r: _int(n, r, 1), "scans", "scans of a progressive JPEG (413)"),
    "MAX_JPEG_SCAN_PIXELS": (
        "max_jpeg_scan_pixels", lambda n, r: _int(n, r, 1), "pixels", "pixels decoded over all scans of a JPEG (413)",
    ),
    "FETCH_TIMEOUT": ("fetch_timeout", lambda n, r: _float(n, r, 0.1), "seconds", "total time for one URL fetch"),
    "FETCH_MAX_BYTES": ("fetch_max_bytes", _bytes, "bytes", "largest image fetched from a URL (413)"),
    "FETCH_MAX_REDIRECTS": ("fetch_max_redirects", lambda n, r: _int(n, r, 0, 20), "0-20", "redirects followed"),
    "MODEL_DIR": ("model_dir", lambda n, r: os.path.expanduser(r.strip()), "a directory", "weights (see models/weights.py)"),
    "ALLOW_DOWNLOADS": ("allow_downloads", _bool, "true|false", "fetch missing weights from the network"),
    "CLIP_MODEL": ("clip_model", lambda n, r: r.strip(), "an open_clip architecture", "CLIP architecture"),
    "CLIP_PRETRAINED": ("clip_pretrained", lambda n, r: r.strip(), "an open_clip tag or a folder", "CLIP weights"),
    "DINO_MODEL": ("dino_model", lambda n, r: r.strip(), "a repo id or a folder", "DINOv2 weights"),
    "CAPTION_MODEL": ("caption_model", lambda n, r: r.strip(), "a repo id or a folder", "BLIP captioning weights"),
    "PERSON_WEIGHTS": (
        "person_weights", lambda n, r: r.strip(), "a file name in MODEL_DIR/torchvision or a path", "Faster R-CNN weights",
    ),
    "PERSON_MIN_SIZE": ("person_min_size", lambda n, r: _int(n, r, 64, 2048), "64-2048", "Faster R-CNN input short side"),
    "CLASSIFIER_DIR": ("classifier_dir", lambda n, r: os.path.expanduser(r.strip()), "a directory", "collection classifiers"),
    "BACKGROUND_CUSTOM_MODEL": (
        "background_custom_model", lambda n, r: os.path.expanduser(r.strip()) or None, "a path or a file name in MODEL_DIR/rembg",
        "your own U²-Net-style .onnx for the u2net_custom segmenter",
    ),
    "ANALYZE_MAX_BATCH_SIZE": ("analyze_max_batch_size", lambda n, r: _int(n, r, 1, 256), "1-256", "/analyze batch size"),
    "ANALYZE_BATCH_TIMEOUT": ("analyze_batch_timeout", lambda n, r: _float(n, r, 0.0), "seconds", "/analyze wait to fill a batch"),
    "EMBED_MAX_BATCH_SIZE": ("embed_max_batch_size", lambda n, r: _int(n, r, 1, 256), "1-256", "/embed batch size"),
    "EMBED_BATCH_TIMEOUT": ("embed_batch_timeout", lambda n, r: _float(n, r, 0.0), "seconds", "/embed wait to fill a batch"),
    "FETCH_ALLOW_NETWORKS": (
        "fetch_allow_networks", _networks, "CIDRs, comma-separated", "private networks URLs may reach",
    ),
    "STORE_BACKEND": (
        "store_backend", lambda n, r: _choice(n, r, STORE_BACKENDS), "|".join(STORE_BACKENDS), "where the image index lives",
    ),
    "DATA_DIR": ("data_dir", lambda n, r: os.path.expanduser(r.strip()), "a directory", "SQLite index and original images"),
    "ELASTICSEARCH_URL": ("elasticsearch_url", _url, "an http(s) URL", "cluster of STORE_BACKEND=elasticsearch"),
    "ELASTICSEARCH_INDEX": ("elasticsearch_index", _index_name, "an index name", "Elasticsearch index of the images"),
    "ELASTICSEARCH_TIMEOUT": ("elasticsearch_timeout", lambda n, r: _float(n, r, 0.1), "seconds", "per Elasticsearch request"),
    "ELASTICSEARCH_REFRESH": (
        "elasticsearch_refresh", lambda n, r: _choice(n, r, REFRESH_POLICIES), "|".join(REFRESH_POLICIES),
        "when an add or delete becomes searchable",
    ),
    "SEARCH_MODELS": ("search_models", _models, "embedders of the catalogue, comma-separated, or none", "embeddings computed on /add"),
    "SEARCH_MAX_BATCH_SIZE": ("search_max_batch_size", lambda n, r: _int(n, r, 1, 256), "1-256", "search batch size"),
    "SEARCH_BATCH_TIMEOUT": ("search_batch_timeout", lambda n, r: _float(n, r, 0.0), "seconds", "search wait to fill a batch"),
    "STATS_MAX_QUEUE": (
        "stats_max_queue", lambda n, r: _int(n, r, 1, 100000), "1-100000", "/stats requests queued or in work (503 past it)",
    ),
    "ANALYZE_MAX_QUEUE": (
        "analyze_max_queue", lambda n, r: _int(n, r, 1, 100000), "1-100000", "/analyze requests queued or in work (503 past it)",
    ),
    "EMBED_MAX_QUEUE": (
        "embed_max_queue", lambda n, r: _int(n, r, 1, 100000), "1-100000", "/embed requests queued or in work (503 past it)",
    ),
    "SEARCH_MAX_QUEUE": (
        "search_max_queue", lambda n, r: _int(n, r, 1, 100000), "1-100000",
        "/add, /search, /compare, /find_similar/ requests queued or in work (503 past it)",
    ),
    "BACKGROUND_MODEL": (
        "background_model", _segmenter, "a segmenter of the catalogue", "background removal's model when none is asked",
    ),
    "BACKGROUND_MODELS": (
        "background_models", _segmenters_list, "segmenters of the catalogue, comma-separated",
        "segmenters the background workers load",
    ),
    "BACKGROUND_MAX_BATCH_SIZE": (
        "background_max_batch_size", lambda n, r: _int(n, r, 1, 256), "1-256", "background removal batch size",
    ),
    "BACKGROUND_BATCH_TIMEOUT": (
        "background_batch_timeout", lambda n, r: _float(n, r, 0.0), "seconds", "background removal wait to fill a batch",
    ),
    "BACKGROUND_MAX_QUEUE": (
        "background_max_queue", lambda n, r: _int(n, r, 1, 100000), "1-100000",
        "/remove-background, /api/remove, POST /records and POST / requests queued or in work (503 past it)",
    ),
    "USER_LIMIT": ("user_limit", lambda n, r: _int(n, r, 1, 1000000), "1-1000000", "gallery records per user (4xx past it)"),
}


def load_settings(environ=None) -> Settings:
    """Build Settings from `environ` (default os.environ); raise SettingsError naming the first bad variable."""
    environ = os.environ if environ is None else environ
    values = {}
    for name, (field, parse, _, _) in VARIABLES.items():
        raw = environ.get(name)
        if raw is not None and (raw.strip() or name == "API_KEY"):
            values[field] = parse(name, raw)
    return Settings(**values)


assert {f for f, *_ in VARIABLES.values()} == {f.name for f in fields(Settings)}, "every setting needs a variable"
