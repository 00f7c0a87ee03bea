"""Polling helper shared by the Ray test suites (integration, multinode, e2e)."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest

__all__ = ["wait_for"]


def wait_for(predicate: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.25, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(interval_s)
