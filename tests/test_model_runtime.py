"""models/runtime.py: how each model worker sizes torch's thread pool and tunes glibc's allocator."""

import subprocess
import sys
from dataclasses import replace

import pytest

from models.runtime import usable_cores, worker_threads
from settings import Settings
from tests.conftest import ROOT


def test_workers_share_the_cores_unless_torch_threads_is_set():
    cores = usable_cores()
    one = Settings(workers_per_device=1, capabilities=("embed",))
    assert worker_threads(one) == cores
    assert worker_threads(replace(one, capabilities=("stats", "embed"))) == cores  # /stats runs no model
    assert worker_threads(replace(one, workers_per_device=cores)) == 1
    assert worker_threads(replace(one, workers_per_device=cores * 4)) == 1  # never 0
    assert worker_threads(replace(one, torch_threads=3)) == 3


def test_every_model_capability_served_takes_its_share_of_the_cores():
    """Under mixed traffic each model capability's workers run at once: 2 threads each on 2 cores gave /analyze
    504s in the soak, 1 each none (bench/README.md, "Soak")."""
    cores = usable_cores()
    four = Settings(workers_per_device=1, capabilities=("stats", "analyze", "embed", "search", "background"))
    assert worker_threads(four) == max(1, cores // 4)
    assert worker_threads(replace(four, workers_per_device=2)) == max(1, cores // 8)
    assert worker_threads(replace(four, torch_threads=2)) == 2


def _configure_in_child(env_extra: dict) -> str:
    code = ("import torch; from settings import Settings; from models.runtime import configure_worker, tune_allocator;"
            "configure_worker(Settings(workers_per_device=64)); print(torch.get_num_threads(), tune_allocator())")
    env = {"PATH": "/usr/bin:/bin", **env_extra}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True).stdout.split()


@pytest.mark.slow  # a Python child that imports torch: out of `make test-fast`
def test_configure_worker_sets_threads_and_tunes_glibc_malloc():
    threads, tuned = _configure_in_child({})
    assert threads == "1" and tuned == "True"  # mallopt accepted every parameter


@pytest.mark.slow  # a Python child that imports torch: out of `make test-fast`
def test_operator_malloc_settings_are_left_alone():
    _, tuned = _configure_in_child({"MALLOC_ARENA_MAX": "2"})
    assert tuned == "False"
