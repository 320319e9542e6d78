"""Short-lived things a run creates (its node pods, verify's probe pods) and must remove however it ends.

Each is registered *before* the request that creates it (`creating`), with the call that deletes it; the
normal path deletes it and calls `forget`. When the run is interrupted (Ctrl-C, or SIGTERM, which the CLI
turns into the same KeyboardInterrupt: rbacbridge.cli.main), `stop()` is called from the signal handler
(no lock: a flag) and `undo_all()` from the main thread before the process exits: it waits a moment for
creations already on the wire, refuses new ones (`Stopped`), then deletes everything still registered.
Worker threads that poll (a pod waiting to run) call `check()` and give up at once.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Hashable, Iterator

from rbacbridge.errors import RbacbridgeError

IN_FLIGHT_WAIT = 5.0  # seconds undo_all waits for a creation request already sent

_cond = threading.Condition()
_undoing = threading.Lock()  # one undo_all at a time: a second caller waits for the first to finish
_undo: dict[Hashable, Callable[[], Any]] = {}
_in_flight = 0
_stopping = False
_interrupt_line: str | None = None  # what an interruption of this run says, when "run it again" does not fit


class Stopped(RbacbridgeError):
    """The run is being interrupted: nothing new is created, waits end."""


def stop() -> None:
    """From a signal handler: no lock taken (the handler may run while this thread holds it)."""
    global _stopping
    _stopping = True


def stopping() -> bool:
    return _stopping


def check() -> None:
    if _stopping:
        raise Stopped("interrupted")


@contextmanager
def creating(key: Hashable, undo: Callable[[], Any]) -> Iterator[None]:
    """Around the request that creates `key`: registered first, so an interruption at any point deletes it."""
    global _in_flight
    with _cond:
        if _stopping:
            raise Stopped("interrupted: nothing new is created")
        _undo[key] = undo
        _in_flight += 1
    try:
        yield
    finally:
        with _cond:
            _in_flight -= 1
            _cond.notify_all()


def forget(key: Hashable) -> None:
    """`key` is gone (deleted on the normal path), or was never created."""
    with _cond:
        _undo.pop(key, None)


def pending() -> list[Hashable]:
    with _cond:
        return list(_undo)


def undo_all(wait: float = IN_FLIGHT_WAIT) -> list[Hashable]:
    """Stop, let creations on the wire land (at most `wait` seconds), delete what is registered. Best effort:
    a delete that fails is left to the next run (which deletes leftovers by label) and to the pods' own
    deadlines. Returns the keys it tried."""
    stop()
    with _undoing:
        deadline = time.monotonic() + wait
        with _cond:
            while _in_flight and deadline - time.monotonic() > 0:
                _cond.wait(deadline - time.monotonic())
            items = list(_undo.items())
        for key, undo in items:
            try:
                undo()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
            forget(key)
    return [key for key, _ in items]


def on_interrupt_say(line: str) -> None:
    """The line an interruption of this run ends with (the CLI adds `error: `), instead of the usual advice
    to run the same command again (rbacbridge.errors.INTERRUPTED_MESSAGE): the demo has nothing to finish."""
    global _interrupt_line
    _interrupt_line = line


def interrupt_line() -> str:
    from rbacbridge.errors import INTERRUPTED_MESSAGE

    return _interrupt_line or INTERRUPTED_MESSAGE


def reset() -> None:
    """For a process that runs the CLI more than once (tests): forget the stop."""
    global _stopping, _in_flight, _interrupt_line
    with _cond:
        _stopping = False
        _in_flight = 0
        _undo.clear()
        _interrupt_line = None
