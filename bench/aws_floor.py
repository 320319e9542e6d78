"""The whole-process boto3 floor for `rbacbridge setup --only aws`: the same AWS calls, nothing else.

    python bench/aws_floor.py record CALLS.json -- setup --only aws ...   # runs rbacbridge, writes its calls
    python bench/aws_floor.py replay CALLS.json [OLD=NEW ...]              # imports boto3, makes those calls

`record` runs the real CLI in this process with a botocore hook (BaseClient._make_api_call) that notes
(service, operation, params) of every call, in order. `replay` is the floor: a Python process that imports
boto3, makes one client per service and the same calls in the same order (a call's AWS error is expected
where rbacbridge expected it: a get on something not yet there); OLD=NEW replaces ids that differ between
runs (e.g. instance ids after a moto reset). Used by bench_aws_setup.py --floor.
"""

from __future__ import annotations

import json
import sys


def record(path: str, argv: list[str]) -> int:
    import runpy

    import botocore.client

    calls: list[dict] = []
    original = botocore.client.BaseClient._make_api_call

    def noted(self, operation_name, api_params):
        calls.append({"service": self.meta.service_model.service_name, "operation": operation_name, "params": api_params})
        return original(self, operation_name, api_params)

    botocore.client.BaseClient._make_api_call = noted
    sys.argv = ["rbacbridge", *argv]
    code = 0
    try:
        runpy.run_module("rbacbridge", run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        with open(path, "w") as fh:
            json.dump(calls, fh, default=str)
    return code


def replay(path: str, substitutions: list[str]) -> int:
    import boto3
    import botocore.exceptions

    text = open(path).read()
    for pair in substitutions:
        old, new = pair.split("=", 1)
        text = text.replace(old, new)
    session = boto3.Session()
    clients: dict = {}
    for call in json.loads(text):
        service = call["service"]
        if service not in clients:
            clients[service] = session.client(service)
        try:
            clients[service]._make_api_call(call["operation"], call["params"])
        except botocore.exceptions.ClientError:
            pass  # the same answer rbacbridge got (e.g. NoSuchEntity before a create)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "record":
        sys.exit(record(sys.argv[2], sys.argv[4:] if sys.argv[3] == "--" else sys.argv[3:]))
    sys.exit(replay(sys.argv[2], sys.argv[3:]))
