"""The architecture rules of docs/architecture.md: no module over 500 lines, no import cycle, nothing imports the
CLI, `rbacbridge --help` imports none of boto3, botocore, kubernetes, paramiko, and the "may import" column of
the Packages table. The source is read with ast (nothing of rbacbridge is imported here); the --help check runs
in a fresh interpreter."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500
HEAVY = ("boto3", "botocore", "kubernetes", "paramiko")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted((ROOT / "rbacbridge").rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    importer: str  # an rbacbridge module
    target: str  # the module an import statement names: rbacbridge's own, or the top name of a library
    line: int
    top_level: bool  # runs when the importer is imported: not inside a function, not under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        return f"{MODULES[self.importer].relative_to(ROOT)}:{self.line} imports {self.target}"


def _targets(importer: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules one import statement names. `from rbacbridge.x import y` names rbacbridge.x.y when y is a
    submodule, else rbacbridge.x (y is one of its attributes)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative: from the importer's package
        package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    return submodules + ([base] if len(submodules) < len(node.names) else [])


def imports_of(name: str) -> list[Import]:
    out: list[Import] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.extend(Import(name, t, child.lineno, top_level) for t in _targets(name, child))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, False)
            else:
                visit(child, top_level)

    visit(ast.parse(MODULES[name].read_text(), filename=str(MODULES[name])), True)
    return out


IMPORTS: list[Import] = [i for name in MODULES for i in imports_of(name)]
OWN = [i for i in IMPORTS if i.target in MODULES]


def _packages_above(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


def import_time_graph(imports: list[Import]) -> dict[str, set[str]]:
    """Module -> the modules importing it runs. Importing a.b.c from outside package a.b runs a and a.b first;
    from inside a.b they are already being imported (no edge, or every package would be a cycle)."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        if i.top_level:
            above = {p for p in _packages_above(i.target) if not i.importer.startswith(p + ".")}
            graph.setdefault(i.importer, set()).update(({i.target} | above) - {i.importer})
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done and (found := visit(nxt)):
                return found
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done and (found := visit(node)):
            return found
    return None


def test_the_scan_sees_the_packages_and_their_imports():
    # every rule below would pass on an empty scan: it must see the packages, lazy and module-level imports
    assert {"rbacbridge.cli", "rbacbridge.aws", "rbacbridge.kube", "rbacbridge.nodes", "rbacbridge.nodes.ssh",
            "rbacbridge.nodes.pods", "rbacbridge.nodes.session", "rbacbridge.config", "rbacbridge.verify",
            "rbacbridge.audit", "rbacbridge.plan", "rbacbridge.planner"} <= set(MODULES)
    assert Import("rbacbridge.cli", "rbacbridge.cli.app", 16, True) in IMPORTS  # from rbacbridge.cli.app import app
    assert any(i.target == "paramiko" and not i.top_level for i in IMPORTS)
    assert len(OWN) > 300


def test_no_module_is_over_500_lines():
    sizes = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in MODULES.values()}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}, f"modules over {MAX_LINES} lines"


def test_no_import_cycle_among_the_modules():
    cycle = find_cycle(import_time_graph(OWN))
    assert cycle is None, "import cycle when importing: " + " -> ".join(cycle or [])


def test_the_cycle_check_follows_submodules_and_packages_and_skips_function_imports():
    def imp(importer, target, top_level=True):
        return Import(importer, target, 1, top_level)

    # `from rbacbridge.nodes import rules` in audit.nodes, and nodes/__init__ importing audit.nodes: a cycle
    # through the package nodes (which runs before nodes.rules)
    ring = [imp("rbacbridge.audit.nodes", "rbacbridge.nodes.rules"), imp("rbacbridge.nodes", "rbacbridge.audit.nodes")]
    assert find_cycle(import_time_graph(ring)) == ["rbacbridge.audit.nodes", "rbacbridge.nodes", "rbacbridge.audit.nodes"]
    assert find_cycle(import_time_graph([ring[0], imp("rbacbridge.nodes", "rbacbridge.audit.nodes", False)])) is None
    # a package importing its own modules, which import each other through the package's path: no cycle
    assert find_cycle(import_time_graph([imp("rbacbridge.nodes", "rbacbridge.nodes.evidence"),
                                         imp("rbacbridge.nodes.evidence", "rbacbridge.nodes.rules")])) is None
    assert _targets("rbacbridge.audit.nodes", ast.parse("from rbacbridge.nodes import rules, NodeRef").body[0]) == [
        "rbacbridge.nodes.rules", "rbacbridge.nodes"]


def test_nothing_imports_the_cli_but_main_and_the_cli_itself():
    outside = [str(i) for i in OWN if i.target.startswith("rbacbridge.cli") and i.importer != "rbacbridge.__main__"
               and not (i.importer + ".").startswith("rbacbridge.cli.")]
    assert outside == []


def test_boto3_kubernetes_and_paramiko_are_imported_inside_functions_only():
    assert [str(i) for i in IMPORTS if i.top_level and i.target.split(".")[0] in HEAVY] == []


HELP_RUN = r"""
import contextlib, io, json, sys
import rbacbridge.cli
import typer.main
from rbacbridge.__main__ import run

HEAVY = %r
def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)

steps = {"import rbacbridge.cli": loaded()}
commands = list(typer.main.get_command(rbacbridge.cli.app).commands)
for argv in [["--help"]] + [[c, "--help"] for c in commands]:
    sys.argv = ["rbacbridge", *argv]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            run()
        except SystemExit as exc:
            assert exc.code in (0, None), (argv, exc.code)
    assert "Usage:" in out.getvalue(), (argv, out.getvalue()[:200])
    steps["rbacbridge " + " ".join(argv)] = loaded()
print(json.dumps(steps))
"""


def test_help_imports_no_aws_kubernetes_or_ssh_library():
    """`import rbacbridge.cli`, `rbacbridge --help` and every command's --help, in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", HELP_RUN % (HEAVY,)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = json.loads(done.stdout.strip().splitlines()[-1])
    assert "rbacbridge --help" in steps and "rbacbridge setup --help" in steps and len(steps) > 10
    assert {step: mods for step, mods in steps.items() if mods} == {}


def package_of(module: str) -> str:
    """The row of the Packages table a module is in: its package (nodes.ssh and nodes.pods apart from nodes),
    or the top-level module itself."""
    parts = module.split(".")
    if parts[1:3] in (["nodes", "ssh"], ["nodes", "pods"]):
        return ".".join(parts[1:3])
    return parts[1] if len(parts) > 1 else "rbacbridge"


# The "may import" column of docs/architecture.md's Packages table, for the packages at the bottom of the
# house. The package itself and rbacbridge/__init__.py (version, managed-by constants) are always allowed;
# lazy imports count too. The named modules are exceptions the table states.
MAY_IMPORT = {
    "config": {"errors"},
    "config_schema": {"config"},
    "kube": {"plan", "config", "errors", "templating", "rbacbridge.verify.expected", "rbacbridge.audit.kube2iam"},
    "aws": {"plan", "config", "errors", "templating", "policy_eval", "kube"},
    "nodes": {"plan", "config", "errors", "templating", "cleanup", "kube", "nodes.ssh", "nodes.pods"},
    "nodes.ssh": {"errors", "rbacbridge.nodes.session"},
    "nodes.pods": {"errors", "templating", "cleanup", "kube", "rbacbridge.nodes.session"},
    "migrate": {"errors", "plan", "config", "policy_eval", "output", "kube", "aws", "rbacbridge.audit.kube2iam",
                "rbacbridge.audit.who_can.matching"},
}


def disallowed(imports: list[Import], package: str) -> list[str]:
    allowed = MAY_IMPORT[package] | {package, "rbacbridge"}
    return [str(i) for i in imports if package_of(i.importer) == package
            and package_of(i.target) not in allowed and i.target not in allowed]


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_a_package_imports_only_what_the_architecture_table_allows(package):
    assert any(package_of(i.importer) == package for i in OWN), f"no module of {package} seen"
    assert disallowed(OWN, package) == []


def test_the_may_import_check_sees_a_forbidden_import():
    bad = [Import("rbacbridge.nodes.ssh.connection", "rbacbridge.nodes.pods.session", 3, False),
           Import("rbacbridge.nodes.pods.choose", "rbacbridge.nodes.planning", 3, True),
           Import("rbacbridge.kube.facts", "rbacbridge.nodes", 3, False),
           Import("rbacbridge.config.model", "rbacbridge.aws.client", 3, True)]
    assert len(disallowed(bad, "nodes.ssh") + disallowed(bad, "nodes.pods") + disallowed(bad, "kube")
               + disallowed(bad, "config")) == 4


def test_every_package_is_in_the_wheel():
    """pyproject.toml lists the packages by name (setuptools does not descend into an unlisted subpackage):
    every directory of rbacbridge/ with an __init__.py must be there, or the installed command fails on import."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "rbacbridge").rglob("__init__.py")}
    assert packages - listed == set()
