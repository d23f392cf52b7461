"""Every index operation timed, by backend and operation (GET /metrics; a debug line per call naming
the request it serves): one wrapper around the store open.py builds, so no backend repeats it."""

import functools

from telemetry import metrics


class TimedStore:
    """The store `inner`, each public method call timed as `imageserver_store_operation_seconds`."""

    def __init__(self, inner, backend: str):
        self._inner, self._backend = inner, backend

    def __getattr__(self, name):
        value = getattr(self._inner, name)
        if name.startswith("_") or not callable(value):
            return value

        @functools.wraps(value)
        def timed(*args, **kwargs):
            with metrics.stage("store", "store_operation", self._backend, name, backend=self._backend, operation=name):
                return value(*args, **kwargs)

        return timed
