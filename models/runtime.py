"""Per-worker runtime settings for the model workers: torch's thread count and glibc's allocator.

Threads: each inference worker is its own process, and torch sizes its OpenMP pool to every core by
default. Two workers (or one worker beside the HTTP process and the image decoder) then oversubscribe
the cores, and OpenMP's spinning threads collapse under contention. So each worker takes its share:
TORCH_THREADS, or cores // (WORKERS_PER_DEVICE x the capabilities served that run models), since every
such capability has its own workers busy at once under mixed traffic (bench/README.md, "Soak": on 2
cores with four model capabilities, 2 threads each gave /analyze 504s and 1 thread each none).

Allocator: a batched forward allocates tens of MB of activations; glibc returns them to the kernel after
each call (mmap for large blocks, heap trimming) and faults them back in on the next. Keeping them (a
fixed mmap threshold and no trimming) makes the forward faster. Skipped when the operator sets MALLOC_*
themselves. Figures for both: bench/README.md, "/embed and /analyze benchmark", "Reading it".

Idle: every worker (model or not) runs a settling thread that, once the worker is idle, collects cycles
and trims the heap, so a large or refused image leaves nothing behind (start_memory_settler).
"""

import ctypes
import gc
import logging
import os
import sys
import threading
import time

log = logging.getLogger("imageserver.runtime")

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
ALLOCATOR = {M_MMAP_THRESHOLD: 32 * 1024**2, M_TRIM_THRESHOLD: 2 * 1024**3 - 1, M_TOP_PAD: 256 * 1024**2}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours taskset / container CPU sets
    except AttributeError:
        return os.cpu_count() or 1


MODEL_CAPABILITIES = ("analyze", "embed", "search", "background")  # /stats runs no model


def worker_threads(settings) -> int:
    if settings.torch_threads:
        return settings.torch_threads
    model_capabilities = max(1, sum(name in MODEL_CAPABILITIES for name in settings.capabilities))
    return max(1, usable_cores() // (settings.workers_per_device * model_capabilities))


def _mallopt(parameters: dict[int, int]) -> bool:
    """Set glibc malloc parameters; False on other platforms or libcs, or when the operator set MALLOC_*."""
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(libc.mallopt(param, value) == 1 for param, value in parameters.items())
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False


def tune_allocator() -> bool:
    """Keep freed activation memory in the process instead of returning it to the kernel (glibc only)."""
    return _mallopt(ALLOCATOR)


def keep_large_buffers_off_the_heap() -> bool:
    """Workers without models (/stats): every block over 1 MiB is its own mapping, given back when freed.

    glibc raises its mmap threshold (up to 32 MiB) each time a mapped block is freed, after which Pillow's
    16 MiB image blocks land on the heap, where a few small live objects can keep them resident. A stats
    worker decodes each image once, so a fixed, low threshold costs nothing measurable.
    """
    return _mallopt({M_MMAP_THRESHOLD: 1024**2})


def configure_worker(settings) -> None:
    """Called once per model worker, before its models load."""
    import torch

    threads = worker_threads(settings)
    torch.set_num_threads(threads)
    tuned = tune_allocator()
    log.info("model worker %d: %d torch thread(s), allocator tuned: %s", os.getpid(), threads, tuned)


# ---------------------------------------------------------------- giving memory back when idle

SETTLE_INTERVAL = 0.5  # seconds between looks
SETTLE_GROWTH = 1.05  # trim when idle RSS is this much above what it was after the last trim
SETTLE_MIN_BYTES = 16 * 1024**2  # ... and at least this much above it


def rss_bytes() -> int:
    """This process's resident set size (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


PR_SET_NAME = 15  # prctl option (linux/prctl.h)


def name_process(name: str) -> bool:
    """Set this process's short name (what top, ps -o comm and psutil's name() show; 15 bytes at most) so
    an operator can tell the workers apart; False where the platform has no prctl."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL("libc.so.6").prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _trim() -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def _settle_forever() -> None:
    """Collect cycles and give freed memory back to the kernel once the worker has been idle for a moment.

    A decoded 60-megapixel image or a refused bomb's buffers are freed, but glibc keeps freed heap
    memory (and the allocator tuning above keeps even more, on purpose, for the next batch), so a worker
    that once served a large image would hold its peak for ever. Trimming only when idle (no CPU used
    over the last interval) and only after RSS grew keeps the busy-path speed: a stream of batches never
    sees a trim, and a trimmed worker faults its activation memory back in once, on the next batch.
    """
    settled = 0  # RSS right after the last trim; 0: not trimmed yet
    cpu = time.process_time()
    while True:
        time.sleep(SETTLE_INTERVAL)
        now = time.process_time()
        idle, cpu = now - cpu < 0.01 * SETTLE_INTERVAL, now
        if not idle:
            continue
        rss = rss_bytes()
        if settled and (rss < settled * SETTLE_GROWTH or rss - settled < SETTLE_MIN_BYTES):
            continue
        gc.collect()  # cycles (an exception's traceback and its frames' images) wait for a collection
        _trim()
        settled = rss_bytes()
        log.debug("worker %d idle: RSS %d -> %d MiB", os.getpid(), rss >> 20, settled >> 20)
        cpu = time.process_time()  # the trim's own CPU is not work


_settler_started = False


def start_memory_settler() -> None:
    """Start the settling thread once per worker process (glibc only; elsewhere nothing to trim)."""
    global _settler_started
    if _settler_started or not sys.platform.startswith("linux"):
        return
    _settler_started = True
    threading.Thread(target=_settle_forever, daemon=True, name="memory-settler").start()
