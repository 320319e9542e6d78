"""A slow AWS call says so: one line on stderr per attempt once a call has taken `SLOW_CALL_SECONDS`
("waiting for iam.amazonaws.com (iam GetRole): attempt 3/10, 5 s so far").

botocore's `before-send` event marks each attempt of a call (retries included) in the thread that makes it;
one daemon thread looks at the calls in flight four times a second, so a call stuck in a single attempt
(a connect or read timeout) is reported too. Only the host, the service and the operation are shown: never
parameters, headers or credentials.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

SLOW_CALL_SECONDS = 2.0
_TICK = 0.25
# botocore's defaults when nothing sets max attempts: 3 in standard/adaptive mode, 5 in legacy (its _retry.json).
_BOTOCORE_DEFAULT_ATTEMPTS = {"standard": 3, "adaptive": 3, "legacy": 5}


def max_attempts(client: Any) -> int:
    retries = getattr(client.meta.config, "retries", None) or {}
    return int(retries.get("total_max_attempts") or _BOTOCORE_DEFAULT_ATTEMPTS.get(retries.get("mode", "legacy"), 5))


def _camel(operation: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in operation.split("_"))


@dataclass
class Call:
    service: str
    operation: str
    limit: int
    started: float = field(default_factory=time.monotonic)
    attempt: int = 0
    url: str = ""
    shown_attempt: int = 0

    @property
    def what(self) -> str:
        return f"{self.service} {_camel(self.operation)}"

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc.rpartition("@")[2] if self.url else self.service

    def attempts_text(self) -> str:
        seconds = time.monotonic() - self.started
        return f"{max(self.attempt, 1)} of {self.limit} attempt{'s' if self.limit != 1 else ''} in {seconds:.1f} s"


class CallWatch:
    def __init__(self, say: Callable[[str], None] | None):
        self.say = say
        self._lock = threading.Lock()
        self._calls: dict[int, Call] = {}
        self._thread: threading.Thread | None = None
        self._attached: set[int] = set()

    def attach(self, client: Any) -> None:
        if id(client) not in self._attached:
            client.meta.events.register("before-send", self._before_send)
            self._attached.add(id(client))

    def start(self, client: Any, service: str, operation: str) -> Call:
        call = Call(service, operation, max_attempts(client))
        with self._lock:
            self._calls[threading.get_ident()] = call
            if self.say is not None and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="aws-progress", daemon=True)
                self._thread.start()
        return call

    def end(self, call: Call) -> None:
        with self._lock:
            if self._calls.get(threading.get_ident()) is call:
                del self._calls[threading.get_ident()]

    def _before_send(self, request: Any = None, **_: Any) -> None:
        call = self._calls.get(threading.get_ident())
        if call is not None:
            call.attempt += 1
            call.url = getattr(request, "url", "") or call.url
        return None  # never answers for botocore: the request goes out

    def _run(self) -> None:
        while True:
            time.sleep(_TICK)
            now = time.monotonic()
            with self._lock:
                due = [c for c in self._calls.values()
                       if now - c.started >= SLOW_CALL_SECONDS and c.attempt and c.attempt != c.shown_attempt]
                for call in due:
                    call.shown_attempt = call.attempt
            for call in due:
                try:
                    self.say(f"waiting for {call.host} ({call.what}): attempt {call.attempt}/{call.limit}, "
                             f"{now - call.started:.0f} s so far")
                except Exception:  # noqa: BLE001 - progress must never break the call it reports on
                    pass
