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
    assert worker_threads(Settings(workers_per_device=1)) == cores
    assert worker_threads(Settings(workers_per_device=cores)) == 1
    assert worker_threads(Settings(workers_per_device=cores * 4)) == 1  # never 0
    assert worker_threads(replace(Settings(workers_per_device=1), torch_threads=3)) == 3


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
