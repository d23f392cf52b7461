"""Per-worker runtime settings for the model workers: torch's thread count and glibc's allocator.

Threads: each inference worker is its own process, and torch sizes its OpenMP pool to every core by
default. Two workers (or one worker beside the HTTP process and the image decoder) then oversubscribe
the cores, and OpenMP's spinning threads collapse under contention: MobileNetV2 at batch 1 with 2
threads fell from ~55 to 1.8 images/s while one other process was busy on this 2-core machine, against
40 images/s with 1 thread. So each worker takes its share: TORCH_THREADS, or cores // WORKERS_PER_DEVICE.

Allocator: a batched forward allocates tens of MB of activations; glibc returns them to the kernel after
each call (mmap for large blocks, heap trimming) and faults them back in on the next (~9,400 minor page
faults per image at batch 8). Keeping them (a fixed mmap threshold and no trimming) made MobileNetV2's
batch-8 forward 1.6x faster here (bench/README.md). Skipped when the operator sets MALLOC_* themselves.
"""

import ctypes
import logging
import os
import sys

log = logging.getLogger("imageserver.runtime")

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
ALLOCATOR = {M_MMAP_THRESHOLD: 32 * 1024**2, M_TRIM_THRESHOLD: 2 * 1024**3 - 1, M_TOP_PAD: 256 * 1024**2}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours taskset / container CPU sets
    except AttributeError:
        return os.cpu_count() or 1


def worker_threads(settings) -> int:
    if settings.torch_threads:
        return settings.torch_threads
    return max(1, usable_cores() // settings.workers_per_device)


def tune_allocator() -> bool:
    """Keep freed activation memory in the process instead of returning it to the kernel (glibc only)."""
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(libc.mallopt(param, value) == 1 for param, value in ALLOCATOR.items())
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False


def configure_worker(settings) -> None:
    """Called once per model worker, before its models load."""
    import torch

    threads = worker_threads(settings)
    torch.set_num_threads(threads)
    tuned = tune_allocator()
    log.info("model worker %d: %d torch thread(s), allocator tuned: %s", os.getpid(), threads, tuned)
