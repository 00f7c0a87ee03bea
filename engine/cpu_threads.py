"""OpenMP thread pools on CPU: why a forward in the engine's loop thread ran ~4x slower than in the main thread.

torch's CPU ops (ATen parallel_for, MKL, oneDNN) run on OpenMP. GNU libgomp (the runtime torch wheels ship) keeps
one pool of worker threads *per thread that ever started a parallel region*, alive until that thread exits, and
counts every pool's threads together. Once that count exceeds the CPUs the process may use, every pool spins only
~100 times (instead of ~300,000) before its workers sleep on a futex, so each of the hundreds of parallel regions
in a forward pays a sleep and a wake-up. No environment variable lifts that throttled spin (GOMP_SPINCOUNT and
OMP_WAIT_POLICY=active only set the unthrottled one). With T intra-op threads each pool holds T-1 workers: a
thread that loaded the model (one pool) plus the loop thread (a second) on C CPUs is throttled when 2T-1 > C,
i.e. always with torch's default T = C.

The cure is to have one pool at a time: :func:`release_openmp_pool` frees the calling thread's pool
(``omp_pause_resource_all``: its workers exit and the count drops; the thread's next parallel region starts a new
pool with the same number of threads, so no result changes). On a CPU device the engine calls it in the thread
that built it (which loaded the model), in each thread that loads or unloads an adapter, in the thread that
submits rows, and in its loop thread before that thread idles. Only the thread that owns a pool can free it: a
thread that keeps doing parallel torch work of its own beside a running loop still throttles both.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: the pool's threads exit; what the runtime needs to restart is kept


@functools.lru_cache(maxsize=1)
def _libgomp() -> Any | None:
    """The GNU libgomp torch's CPU ops run on, or None (another OpenMP runtime, another backend, no torch lib)."""
    try:
        import torch

        if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
            return None
        lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
        if not os.path.exists(lib):
            return None
        # A handle's lookups search the library and its dependencies: the OpenMP runtime libtorch_cpu links.
        handle = ctypes.CDLL(lib)
        if not hasattr(handle, "omp_pause_resource_all") or hasattr(handle, "__kmpc_fork_call"):
            return None  # too old a libgomp, or LLVM/Intel OpenMP (one shared pool, not this problem)
        pause = handle.omp_pause_resource_all
        pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
        return pause
    except (ImportError, OSError, AttributeError):
        return None


def release_openmp_pool() -> bool:
    """Free the calling thread's OpenMP worker pool if it has one; True when libgomp did (or had none to free).

    Cheap when the thread has no pool; otherwise it waits for that pool's workers to exit (microseconds). Never
    call it inside a parallel region (libgomp refuses: False).
    """
    import torch

    if torch.get_num_threads() <= 1:  # one thread: torch never starts a parallel region, there is no pool
        return False
    pause = _libgomp()
    return pause is not None and pause(OMP_PAUSE_SOFT) == 0
