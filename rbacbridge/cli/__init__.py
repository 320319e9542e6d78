"""The command line: parse, build the Config, call the work, render. The work lives in the part packages
and the planner; nothing heavy (boto3, kubernetes, paramiko, rich tables) is imported before a command runs,
so `rbacbridge --help` stays instant.

    app.py         the typer app, its global options and the table of commands
    entry.py       main(): argv -> app -> one error line and an exit code; Ctrl-C and SIGTERM
    group.py       the typer group class (--help without pydantic; Ctrl-C in a command -> Interrupted)
    options.py     the options several commands share (Annotated aliases) and config_from(), their Config
    common.py      the planner Context a command runs with, asking before a change, json/yaml output
    plan_apply.py  plan, setup, teardown          verify.py    verify
    iptables.py    iptables status|fix|remove     audit.py     audit
    tenant.py      tenant add|remove|list         demo.py      demo
    documents.py   config-reference, permissions, render
"""

from rbacbridge.cli.app import app
from rbacbridge.cli.entry import _run, interrupted, main

__all__ = ["app", "main", "interrupted", "_run"]
