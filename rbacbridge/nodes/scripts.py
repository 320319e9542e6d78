"""What goes to a node: one exec to look, one guarded exec to change. Built from validated, quoted argv
(rbacbridge.nodes.session.command_line) and sent through any `Session`.

The look: `iptables -V` (the backend), `iptables -t nat -S PREROUTING`, `ss -Htlnp` (who listens where)
and, on an nf_tables node, the legacy backend's metadata rules. The change: before each delete the
script lists the rules again and deletes by exact spec only if the rule is still there (a duplicate only
while another copy remains; a rule to a port named stale only while nothing listens on the port), so an
interrupted run re-plans and converges.
"""

from __future__ import annotations

from dataclasses import dataclass

from rbacbridge.nodes.rules import (IptablesOutputError, Kube2iamRule, ListedRule, append_argv, backend_of, delete_argv,
                                    list_argv, parse, parse_listeners)
from rbacbridge.nodes.session import NodeError, command_line

_MARK = "@@rbacbridge"
_LISTEN_ARGV = ["ss", "-Htlnp"]  # no sudo: listening sockets are visible to any user (names need root)


def _parse_listing(session, rc: int, out: str, err: str) -> list[ListedRule]:
    if rc != 0:
        raise NodeError(f"{session.name}: listing the nat table failed: {_first_line(err) or f'exit {rc}'}")
    try:
        return parse(out)
    except IptablesOutputError as exc:
        raise NodeError(f"{session.name}: {exc}; nothing changed") from None


def _first_line(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.startswith("Could not chdir")]
    if any(l.startswith("sudo:") for l in lines):
        return next(l for l in lines if l.startswith("sudo:")) + " (the SSH user needs NOPASSWD sudo for iptables)"
    return lines[-1] if lines else ""


def _sudo(session) -> bool:
    return session.user != "root"


def _line(session, argv: list[str], sudo: bool) -> str:
    return command_line(argv, sudo=sudo and _sudo(session))


def _sections(out: str) -> dict[str, tuple[str, int | None]]:
    """Split a script's stdout at `@@rbacbridge NAME` / `@@rbacbridge rc N` marker lines."""
    found: dict[str, tuple[str, int | None]] = {}
    name, lines = None, []
    for line in out.splitlines():
        if line.startswith(_MARK + " "):
            word = line[len(_MARK) + 1:].strip()
            if word.startswith("rc ") and name is not None:
                code = word[3:].strip()
                found[name] = ("\n".join(lines) + ("\n" if lines else ""), int(code) if code.isdigit() else None)
                name, lines = None, []
            else:
                name, lines = word, []
        elif name is not None:
            lines.append(line)
    return found


def _section_script(session, name: str, argv: list[str], sudo: bool, redirect: str = "") -> str:
    return f"echo '{_MARK} {name}'; {_line(session, argv, sudo)}{redirect}; echo \"{_MARK} rc $?\""


def _legacy_script(session) -> str:
    """The legacy backend's nat PREROUTING, only if a legacy nat table already exists (listing it with
    iptables-legacy would otherwise create one: a change). /proc/net/ip_tables_names is root-only."""
    listing = _line(session, ["iptables-legacy", *list_argv()[1:]], sudo=True)
    # read by the shell itself (a `grep` would be one more process on every node)
    has_nat = 'H=; { while read -r T; do [ "$T" = nat ] && H=1; done < /proc/net/ip_tables_names; } 2>/dev/null'
    return (f"echo '{_MARK} legacy'; {has_nat}; if [ -n \"$H\" ]; then {listing} 2>/dev/null; fi; "
            f"echo \"{_MARK} rc $?\"")


def look(session) -> tuple[str, list[ListedRule], dict[int, str] | None, list[str]]:
    """One exec: the iptables backend, the nat PREROUTING rules, the listening TCP ports, and (on an
    nf_tables node) metadata rules hiding in the legacy backend, which this node's iptables cannot see."""
    script = "; ".join([
        _section_script(session, "version", ["iptables", "-V"], sudo=True, redirect=" 2>&1"),
        _section_script(session, "list", list_argv(), sudo=True),
        _section_script(session, "listen", _LISTEN_ARGV, sudo=False, redirect=" 2>/dev/null"),
        _legacy_script(session),
    ])
    rc, out, err = session.run(["sh", "-c", script])
    sections = _sections(out)
    if "list" not in sections:
        raise NodeError(f"{session.name}: listing the nat table failed: {_first_line(err) or f'exit {rc}'}")
    listing, list_rc = sections["list"]
    rules = _parse_listing(session, list_rc if list_rc is not None else 1, listing, err)
    version, _ = sections.get("version", ("", None))
    listen_out, listen_rc = sections.get("listen", ("", None))
    listeners = parse_listeners(listen_out) if listen_rc == 0 else None
    backend = backend_of(version)
    hidden: list[str] = []
    legacy_out, legacy_rc = sections.get("legacy", ("", None))
    if backend == "nf_tables" and legacy_rc == 0 and legacy_out.strip():
        try:
            hidden = [r.text for r in parse(legacy_out) if r.metadata]
        except IptablesOutputError:
            hidden = []
    return backend, rules, listeners, hidden


@dataclass(frozen=True)
class Op:
    """One guarded change: delete `rule` while at least `need` copies are listed (and, for a dead-port
    rule, while nothing listens on `dead_port`); or add it (need 0) while no copy is listed."""

    rule: Kube2iamRule
    need: int  # 1: stale, 2: duplicate (one copy stays), 0: add
    dead_port: int | None = None


# Counting the copies of a rule in the listing $L with the shell's own pattern matching (no process):
# a copy is a whole line, so the listing is framed by newlines and each match consumes one framed line.
# (Newline comes from printf once per script: command lines never carry a raw newline.)
_COUNT_FN = ('NL=$(printf "\\n_"); NL=${NL%_}; '
             'rbb_count() { T="$NL$L$NL"; N=0; while :; do case "$T" in *"$NL$1$NL"*) '
             'T=${T#*"$NL$1$NL"}; T=$NL$T; N=$((N+1));; *) break;; esac; done; }')


def _op_script(session, index: int, op: Op) -> str:
    import shlex

    listing = _line(session, list_argv(), sudo=True)
    count = f"rbb_count {shlex.quote(op.rule.text())}"
    relist = f"L=$({listing}) || {{ echo '{_MARK} listfail {index}'; exit 3; }}; {count}"
    if op.need == 0:
        change, guard = _line(session, append_argv(op.rule), sudo=True), '[ "$N" -lt 1 ]'
    else:
        change, guard = _line(session, delete_argv(op.rule), sudo=True), f'[ "$N" -ge {op.need} ]'
        if op.dead_port is not None:
            probe = _line(session, ["ss", "-Htln", f"sport = :{int(op.dead_port)}"], sudo=False)
            guard += f' && [ -z "$({probe} 2>/dev/null)" ]'
    return (f"{relist}; if {guard}; then {change} || {{ echo '{_MARK} failed {index}'; exit 4; }}; "
            f"echo '{_MARK} changed {index}'; else echo '{_MARK} skipped {index}'; fi")


def run_ops(session, ops: list[Op], final_list: bool = False) -> tuple[list[bool], list[ListedRule] | None]:
    """One exec: every op in order, each re-listing first; optionally the rules afterwards.
    Returns which ops changed something, and the final rules. Raises NodeError on a failed op."""
    parts = [_op_script(session, i, op) for i, op in enumerate(ops)]
    if parts:
        parts.insert(0, _COUNT_FN)
    if final_list:
        parts.append(_section_script(session, "after", list_argv(), sudo=True))
    if not parts:
        return [], None
    rc, out, err = session.run(["sh", "-c", "; ".join(parts)])
    marks = [line[len(_MARK) + 1:].split() for line in out.splitlines() if line.startswith(_MARK + " ")]
    changed = [False] * len(ops)
    for mark in marks:
        if len(mark) == 2 and mark[1].isdigit() and int(mark[1]) < len(ops):
            verb, index = mark[0], int(mark[1])
            what = "adding" if ops[index].need == 0 else "deleting"
            if verb == "changed":
                changed[index] = True
            elif verb == "failed":
                raise NodeError(f"{session.name}: {what} {ops[index].rule.text()} failed: {_first_line(err) or 'exit 4'}")
            elif verb == "listfail":
                raise NodeError(f"{session.name}: listing the nat table failed: {_first_line(err) or 'exit 3'}")
    done = sum(1 for m in marks if m and m[0] in ("changed", "skipped"))
    if done < len(ops):
        raise NodeError(f"{session.name}: the change script stopped after {done} of {len(ops)} step(s): "
                        f"{_first_line(err) or f'exit {rc}'}")
    after = None
    if final_list:
        listing, list_rc = _sections(out).get("after", ("", None))
        after = _parse_listing(session, list_rc if list_rc is not None else 1, listing, err)
    return changed, after
