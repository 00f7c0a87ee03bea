"""OpenMP pools on CPU (``engine/cpu_threads.py``): a pool is freed by the thread that owns it, and the continuous
scheduler frees the submitting thread's pool and its own loop thread's pool before idling, so only one pool spins.

No timings: the first test counts the OS threads libgomp started and stopped, the second records which threads
the scheduler frees pools from.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine import GenerationRequest, SamplingParams
from engine.cpu_threads import _libgomp

_POOL_SCRIPT = """
import os, threading, time, torch
from engine.cpu_threads import release_openmp_pool
torch.set_num_threads(2)
tasks = lambda: set(os.listdir('/proc/self/task'))
out = {}
def work():
    before = tasks()
    torch.ones(1 << 22).add_(1)  # large enough for ATen's parallel_for: starts this thread's pool
    started = tasks() - before
    out['started'] = len(started)
    out['released'] = release_openmp_pool()
    deadline = time.monotonic() + 20
    while started & tasks() and time.monotonic() < deadline:
        time.sleep(0.01)
    out['left'] = len(started & tasks())
t = threading.Thread(target=work); t.start(); t.join()
print(out['started'], out['released'], out['left'])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or _libgomp() is None,
                    reason="needs torch's CPU ops on GNU libgomp (Linux /proc)")
def test_release_stops_the_calling_threads_openmp_workers():
    done = subprocess.run([sys.executable, "-c", _POOL_SCRIPT], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0, done.stderr
    started, released, left = done.stdout.split()
    assert int(started) >= 1  # two intra-op threads: the thread itself plus one libgomp worker
    assert released == "True"
    assert left == "0"


def test_the_scheduler_frees_the_submitters_pool_and_the_idle_loops_pool(engine, tokenizer, monkeypatch):
    if engine.device.type != "cpu":
        pytest.skip("the scheduler frees OpenMP pools only on a CPU device")
    calls: list[str] = []
    monkeypatch.setattr("engine.scheduler.release_openmp_pool", lambda: calls.append(threading.current_thread().name))
    caller = threading.current_thread().name
    handle = engine.submit(GenerationRequest(prompt="the council met", params=SamplingParams(max_new_tokens=4)))
    handle.future.result(timeout=60)
    assert calls and calls[0] == caller  # before the loop thread started
    deadline = time.monotonic() + 30
    while "engine-scheduler" not in calls:  # the loop frees its own pool once it has no rows
        assert time.monotonic() < deadline, f"the loop never freed its pool: {calls}"
        time.sleep(0.01)
    engine.close()
