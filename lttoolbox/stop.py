"""Stop requests (Ctrl-C, SIGTERM, SIGHUP) that survive code which swallows an exception.

``lttrain`` turns a stop signal into ``KeyboardInterrupt``, which normally unwinds to its
handler. Third-party code running at that moment (an import, a data reader) may catch and drop
it; the request is therefore also recorded here, and the trainer calls :func:`check` at every
step, so a run stops at the next step in any case.
"""
from __future__ import annotations

import threading

_requested = threading.Event()


def request() -> None:
    """Record a stop request (called by the signal handler)."""
    _requested.set()


def clear() -> None:
    _requested.clear()


def requested() -> bool:
    return _requested.is_set()


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a stop was requested and not handled yet."""
    if _requested.is_set():
        raise KeyboardInterrupt("stop requested")
