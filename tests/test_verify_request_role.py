"""Live annotation cells: the pod asks 169.254.169.254 for another role's credentials by name
(rbacbridge.verify.probes.REQUEST_ROLE_SCRIPT, run by AwsCliBackend.request_role). Here the real script runs with
curl, then with wget only, in a network namespace of its own where a small metadata server answers on
169.254.169.254:80 (200 with a credentials body for one role, 403 for any other, like kube2iam)."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from rbacbridge import verify as v
from rbacbridge.verify.probes import REQUEST_ROLE_SCRIPT, classify_request

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                                    reason="needs root and unshare")]

SERVER = textwrap.dedent('''
    import sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def _send(self, code, body):
            self.send_response(code); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
        def do_PUT(self):
            self._send(200, b"token-1")
        def do_GET(self):
            if self.path == "/latest/meta-data/iam/security-credentials/mine":
                self._send(200, b'{"SecretAccessKey": "SECRET-MUST-NOT-LEAVE"}')
            else:
                self._send(403, b"Invalid role")
    s = HTTPServer(("169.254.169.254", 80), H)
    print("ready", flush=True)
    s.serve_forever()
''')


def ask(tmp_path, role: str, tools: tuple[str, ...]) -> tuple[int, str, str]:
    """Run the script for `role` in a fresh network namespace next to the metadata server; only `tools` on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("sh", "echo", *tools):
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            os.symlink(found, bin_dir / tool)
    (tmp_path / "server.py").write_text(SERVER)
    inner = (f"ip link set lo up && ip addr add 169.254.169.254/32 dev lo && "
             f"{{ {sys.executable} {tmp_path / 'server.py'} > {tmp_path / 'ready'} 2>&1 </dev/null & }} && server=$! && "
             f"for i in $(seq 50); do grep -q ready {tmp_path / 'ready'} && break; sleep 0.1; done; "
             f"env -i PATH={bin_dir} sh -c \"$0\" rbacbridge-ask \"$1\"; rc=$?; kill $server; wait $server; exit $rc")
    done = subprocess.run(["unshare", "-n", "sh", "-c", inner, REQUEST_ROLE_SCRIPT, role], capture_output=True, text=True,
                          timeout=60)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("tools", [("curl",), ("wget",)])
def test_handed_out_refused_and_no_secret_leaves(tmp_path, tools):
    arn = "arn:aws:iam::123456789012:role/mine"
    rc, out, err = ask(tmp_path, "mine", tools)
    handed = classify_request(rc, out, err, arn)
    assert handed.ok and handed.value == arn and "SECRET" not in out + err
    rc, out, err = ask(tmp_path, "client-c-s3", tools)
    refused = classify_request(rc, out, err, "arn:aws:iam::123456789012:role/client-c-s3")
    assert not refused.ok and refused.category == v.NO_CREDENTIALS, (rc, out, err)


def test_no_http_client_is_a_probe_problem(tmp_path):
    rc, out, err = ask(tmp_path, "mine", ())
    result = classify_request(rc, out, err, "arn:aws:iam::123456789012:role/mine")
    assert not result.ok and result.category == v.CLI_MISSING and "no curl or wget" in result.detail


def test_nothing_listening_is_no_answer_not_a_refusal(tmp_path):
    done = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up && sh -c \"$0\" rbacbridge-ask mine", REQUEST_ROLE_SCRIPT],
                          capture_output=True, text=True, timeout=60)
    result = classify_request(done.returncode, done.stdout, done.stderr, "arn:aws:iam::123456789012:role/mine")
    assert not result.ok and result.category == v.NETWORK, (done.stdout, done.stderr)


def test_a_role_name_outside_iams_characters_is_never_sent():
    backend = v.AwsCliBackend(v.LocalRunner(prefix=["false"]), "us-east-1")
    result = backend.request_role("x; rm -rf /", "arn:aws:iam::123456789012:role/x")
    assert not result.ok and result.category == v.ERROR and "not an IAM role name" in result.detail
