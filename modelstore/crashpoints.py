"""Test hook: a publisher that ``kill -9``s itself at a named phase.

The durability tests set ``MODELSTORE_CRASH_AT=<phase>`` in a publisher's environment to kill it at an
exact point and then prove that re-running the same publish completes it. Unset (production), a crash
point is one environment lookup and does nothing. A phase name the store does not know is refused, so a
typo in a test cannot silently test nothing.

Phases of one publish, in order:

* ``staging``  -- the staging directory exists, no file is copied yet;
* ``hashing``  -- the first file is copied and hashed, the others are not;
* ``manifest`` -- every file and the manifest are staged and fsynced, nothing is renamed;
* ``rename``   -- the version is renamed into ``versions/`` (complete), ``current`` is not flipped;
* ``flip``     -- ``current`` points at the new version, the history does not record it yet.
"""

from __future__ import annotations

import os
import signal

from .errors import ModelStoreError

__all__ = ["CRASH_ENV", "PHASES", "crash_point"]

CRASH_ENV = "MODELSTORE_CRASH_AT"
PHASES = ("staging", "hashing", "manifest", "rename", "flip")


def crash_point(phase: str) -> None:
    """SIGKILL this process if ``$MODELSTORE_CRASH_AT`` names ``phase``; otherwise do nothing.

    Raises:
        ModelStoreError: the variable names no phase in :data:`PHASES`.
    """
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    if wanted not in PHASES:
        raise ModelStoreError(f"{CRASH_ENV}={wanted!r} names no publish phase; choose one of {', '.join(PHASES)}")
    if wanted == phase:
        os.kill(os.getpid(), signal.SIGKILL)
