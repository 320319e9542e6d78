"""pytest fixtures for real nodes (network namespaces with sshd + iptables), see tests/netns.py.

    from tests.fixtures_nodes import node, make_node, host_ruleset_unchanged  # noqa: F401
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.netns import Node, available, leftovers

_why = available()
netns = pytest.mark.skipif(_why is not None, reason=f"real nodes: {_why}")


def _host_ruleset() -> str:
    return subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout


def _strip_counters(text: str) -> list[str]:
    return [re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if not line.startswith("#")]


@pytest.fixture
def host_ruleset_unchanged():
    """Asserts after the test that the root namespace's iptables rules are what they were."""
    before = _strip_counters(_host_ruleset())
    yield
    assert _strip_counters(_host_ruleset()) == before


@pytest.fixture
def make_node(host_ruleset_unchanged):
    """Factory: make_node(name, **Node.start kwargs) -> Node; all closed (and checked gone) after the test."""
    if _why is not None:
        pytest.skip(f"real nodes: {_why}")
    made: list[Node] = []

    def make(name: str = "node", **kw) -> Node:
        node = Node.start(name, **kw)
        made.append(node)
        return node

    yield make
    namespaces = {n.namespace for n in made}
    for node in reversed(made):  # children (behind a jump host) before their parent
        node.close()
    left = [name for name in leftovers() if any(name.startswith(ns) or ns.replace("-", "") in name for ns in namespaces)]
    assert not left, f"left behind: {left}"


@pytest.fixture
def node(make_node) -> Node:
    return make_node("node-a")
