"""A hard time limit for the standalone GPU scripts (gpu_check.py, gpu_packed.py): device time is scarce, so once
the limit passes the script records why, writes what it has measured and exits 1, whatever is still running."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable


def arm(limit_s: float, started: float, on_timeout: Callable[[], None],
        finish: Callable[[], object]) -> threading.Timer:
    """Start a daemon timer that, ``limit_s`` seconds after ``started`` (a ``time.monotonic()`` value), calls
    ``on_timeout`` (stop what runs, record the failure), then ``finish`` (write the results), then ends the process
    with status 1. Returns the timer, to cancel once the script has finished on its own."""

    def expire() -> None:
        try:
            on_timeout()
            finish()
        finally:
            os._exit(1)

    timer = threading.Timer(max(1.0, limit_s - (time.monotonic() - started)), expire)
    timer.daemon = True
    timer.start()
    return timer
