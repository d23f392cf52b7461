"""Log lines that name their request, as text or one JSON object per line (LOG_LEVEL, LOG_FORMAT).

`request_id` holds the id of the request being handled (apis/edge.py sets it in the HTTP process,
apis/tracing.py in the worker while it decodes, predicts for and answers that request; a batch's lines
carry every id of the batch, comma-separated). A filter on the one handler copies it onto every record,
so every logger (ours, LitServe's, uvicorn's) gets it without knowing about it.

Each process configures itself: server.main the main process (the HTTP processes are forked from it and
keep it), `WorkerLogging` (a LitServe callback run before setup) every spawned model worker, which would
otherwise print bare warnings through Python's last-resort handler.
"""

import contextvars
import json
import logging
import os
import sys
import threading
import time

from litserve.callbacks import Callback

from models.runtime import name_process

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

FORMATS = ("text", "json")
# record attributes a caller may set with extra= that JSON lines carry as fields of their own
FIELDS = ("route", "method", "path", "status", "duration_s", "stage", "seconds", "model", "images", "operation",
          "backend", "outcome", "capability")
LIBRARY_LOGGERS = ("litserve", "uvicorn", "uvicorn.error", "uvicorn.access")
QUIET_LOGGERS = ("PIL",)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL pid logger [request id]: message`; the bracket only for a line about a request."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(process)d %(name)s%(tag)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.tag = f" [{record.request_id}]" if getattr(record, "request_id", None) else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, pid, message, request_id when the
    line is about one request (and request_ids when about a batch), exception text, and FIELDS set."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        ids = getattr(record, "request_id", None)
        if ids:
            entry["request_id"] = ids
            if "," in ids:
                entry["request_ids"] = ids.split(",")
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str = "INFO", log_format: str = "text") -> None:
    """One stderr handler on the root logger, in `log_format`; the libraries' own handlers removed so
    their lines come through it too (one format per stream, every line tagged)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LOGGERS:  # their debug lines describe file structure, not requests
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
    adopt_library_loggers()
    # what Python itself would print to stderr comes through the handler too: warnings, and an exception
    # nobody caught in a thread or at the top of the process
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = lambda args: _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback,
                                                      getattr(args.thread, "name", "thread"))


def _log_uncaught(exc_type, exc_value, exc_traceback, where: str = "main thread") -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        return sys.__excepthook__(exc_type, exc_value, exc_traceback)
    logging.getLogger("imageserver").critical("uncaught exception in %s", where,
                                              exc_info=(exc_type, exc_value, exc_traceback))


def adopt_library_loggers() -> None:
    """LitServe's run() gives its logger a handler of its own (and uvicorn's dictConfig would too):
    send their lines to the root handler instead."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for old in logger.handlers[:]:
            logger.removeHandler(old)
        logger.propagate = True


def startup_failure(message: str) -> None:
    """A failure before the settings are read (a bad variable): one line on stderr, a JSON object when
    LOG_FORMAT=json, else the message alone."""
    if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":
        record = logging.makeLogRecord({"name": "imageserver", "levelno": logging.CRITICAL, "levelname": "CRITICAL",
                                        "msg": message})
        message = JsonFormatter().format(record)
    print(message, file=sys.stderr)


class WorkerLogging(Callback):
    """Configures logging in each spawned model worker, before its setup() loads models, and names the
    worker's process after its capability ("img-search" in top and ps -o comm)."""

    def __init__(self, level: str, log_format: str):
        self.level, self.log_format = level, log_format

    def on_before_setup(self, *args, lit_api=None, **kwargs):
        configure(self.level, self.log_format)
        name_process(worker_name(getattr(lit_api, "capability", "worker")))


def worker_name(capability: str) -> str:
    return f"img-{capability}"
