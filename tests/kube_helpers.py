"""Shared helpers for the Kubernetes tests (the fixture itself is in tests/fixtures_kube.py)."""

from __future__ import annotations

from rbacbridge.config import Config
from rbacbridge.planner import Context, Reporter

ACCOUNT = "123456789012"


class CollectingReporter(Reporter):
    def __init__(self):
        self.messages: list[str] = []

    def progress(self, message: str) -> None:
        self.messages.append(message)


def kube_context(kube_api, **overrides) -> Context:
    values = {"account_id": ACCOUNT, "kubeconfig": kube_api.kubeconfig, "rollout_timeout": 5.0}
    values.update(overrides)
    return Context(Config(**values), parts=("kube",), reporter=CollectingReporter())


def steps_by_name(plan) -> dict[tuple[str, str], object]:
    return {(s.kind, s.name): s for s in plan.steps}
