"""The lab's AWS: a moto server plus a small control endpoint, run as one process in the lab's "aws"
network namespace (`ip netns exec NS python -m tests.lab_moto HOST PORT CONTROL_PORT`).

The control endpoint (`POST /assume-role` with JSON {"role_arn", "session"}) hands out STS
credentials for a role straight from moto's STS backend. The lab's metadata and kube2iam stand-ins
use it because moto, with IAM enforcement on, matches a trust policy's Principal against the caller's
exact ARN: it would refuse EC2 itself (a service principal) and refuse the node role's *sessions*
where AWS accepts them. The stand-ins evaluate the trust policies themselves with
tests/lab_decide.py (never rbacbridge's own evaluator) before they call it.
"""

from __future__ import annotations

import json
import logging
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Control(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.sts.models import sts_backends

        if self.path != "/assume-role":
            self.send_error(404)
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        role_arn, session = body["role_arn"], body["session"]
        account = role_arn.split(":")[4] or DEFAULT_ACCOUNT_ID
        role = sts_backends[account]["aws"].assume_role(region_name="us-east-1", role_session_name=session, role_arn=role_arn,
                                                        policy=None, duration=3600, external_id=None)
        answer = json.dumps({"AccessKeyId": role.access_key_id, "SecretAccessKey": role.secret_access_key,
                             "Token": role.session_token,
                             "Expiration": role.expiration.strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def main(host: str, port: int, control_port: int) -> None:
    from moto.server import ThreadedMotoServer

    from rbacbridge.sandbox_backend import aws_like_trust

    aws_like_trust()  # trust policies decided as AWS does (a trusted role ARN covers its sessions)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    control = ThreadingHTTPServer((host, control_port), _Control)
    control.daemon_threads = True
    print("ready", flush=True)
    control.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
