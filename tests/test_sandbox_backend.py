"""The sandbox checks its own backend before telling a story (issue 21): known-answer probes against moto,
and what the demo does when the backend answers unlike AWS (a flipping proxy; moto 5.2.6 itself)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest

from rbacbridge.sandbox_backend import LOCKED_MOTO, BackendMismatch, check_backend, set_enforcement
from tests.fixtures_aws import moto_url  # noqa: F401 - one moto server per test run

REPO = Path(__file__).resolve().parents[1]
DUMMY = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def test_the_locked_moto_is_the_one_the_error_line_names():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "requirements.lock").read_text(), re.M))
    assert pins["moto"] == LOCKED_MOTO


def _state(url: str) -> tuple:
    iam = boto3.client("iam", endpoint_url=url, **DUMMY)
    s3 = boto3.client("s3", endpoint_url=url, **DUMMY)
    return ([r["RoleName"] for r in iam.list_roles()["Roles"]], [b["Name"] for b in s3.list_buckets()["Buckets"]],
            [u["UserName"] for u in iam.list_users()["Users"]])


def test_locked_moto_answers_every_probe_as_aws_and_nothing_is_left(moto_url):
    urllib.request.urlopen(urllib.request.Request(moto_url + "/moto-api/reset", data=b"", method="POST")).read()
    before = _state(moto_url)
    assert check_backend(moto_url) == 8
    assert _state(moto_url) == before  # roles, buckets and users as they were
    boto3.client("s3", endpoint_url=moto_url, **DUMMY).list_buckets()  # enforcement is off again: dummy keys work


class _FlipListing(BaseHTTPRequestHandler):
    """A proxy in front of moto that denies one thing AWS allows: listing a bucket the caller may list."""

    upstream = ""

    def log_message(self, *args) -> None:
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if self.command in ("POST", "PUT") else None
        if self.command == "GET" and "list-type=2" in self.path and "-granted" in self.path.split("?")[0]:
            answer = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                      b"<Message>Access Denied</Message></Error>")
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        request = urllib.request.Request(self.upstream + self.path, data=body, method=self.command,
                                         headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, headers, data = response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            status, headers, data = exc.code, exc.headers, exc.read()
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def test_a_backend_that_flips_one_iam_answer_is_named_with_the_probe(moto_url):
    handler = type("Flip", (_FlipListing,), {"upstream": moto_url})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        with pytest.raises(BackendMismatch) as caught:
            check_backend(f"http://127.0.0.1:{proxy.server_port}")
    finally:
        proxy.shutdown()
        proxy.server_close()
        set_enforcement(moto_url, False)
    message = str(caught.value)
    assert caught.value.exit_code == 3
    assert "s3:ListBucket granted on bucket B: ListObjectsV2 on B: AWS allows it, moto denied (AccessDenied)" in message
    assert f"pip install 'moto[server]=={LOCKED_MOTO}'" in message and "\n" not in message


# The module fixture is built once: every test here runs on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_sandbox_backend")


@pytest.fixture(scope="module")
def moto_526(tmp_path_factory):
    """moto 5.2.6 (the release that denies ListBucket-granted listings) beside the locked one, for one process."""
    target = tmp_path_factory.mktemp("moto-5.2.6")
    got = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                          "--target", str(target), "moto==5.2.6"], capture_output=True, text=True, timeout=300)
    if got.returncode != 0:
        pytest.skip(f"moto 5.2.6 could not be downloaded here: {got.stderr.strip()[-200:]}")
    return target


def test_demo_on_moto_526_stops_with_one_line_and_exit_3_before_any_matrix(moto_526, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = f"{moto_526}{os.pathsep}{REPO}"
    result = subprocess.run([sys.executable, "-m", "rbacbridge", "demo"], capture_output=True, text=True, env=env,
                            timeout=180, cwd=tmp_path)
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr
    assert result.stdout == ""  # no story, no verify matrix
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: the sandbox's AWS backend (moto 5.2.6)")
    assert "ListObjectsV2" in result.stderr and f"pip install 'moto[server]=={LOCKED_MOTO}'" in result.stderr
