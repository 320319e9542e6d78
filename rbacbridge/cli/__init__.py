"""The command line: parse, build the Config, call the work, render. The work lives in the part packages
and the planner; nothing heavy (boto3, kubernetes, paramiko, rich tables) is imported before a command runs,
so `rbacbridge --help` stays instant.

    app.py         the typer app, global options, the table of commands
    entry.py       main(): argv -> app -> one error line and an exit code; Ctrl-C / SIGTERM
    group.py       the typer group class (keeps --help from importing pydantic)
    options.py     the options several commands share, and the Config they build
    common.py      the planner Context a command runs with, asking before changes, json/yaml output
    plan_apply.py  plan, setup, teardown
    verify.py, audit.py, iptables.py, tenant.py, demo.py
    documents.py   config-reference, permissions, render
"""

from rbacbridge.cli.app import app
from rbacbridge.cli.entry import _run, interrupted, main

__all__ = ["app", "main", "interrupted", "_run"]
