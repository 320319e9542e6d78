"""The FLOOR of verify's matrix, in process: the 12 probes of the default matrix (plus 3 identity calls) vs one
probe, concurrent, target <= 2x. This is NOT the command users run: no `rbacbridge` process, no Kubernetes
exec, no SSH, no drift check. `bench/bench_verify_lab.py` times the real `rbacbridge verify` in the lab;
this bench says how close the matrix itself is to one probe when nothing else costs.

moto runs as its own process (server mode) with IAM enforcement on; each principal probes with
the credentials of the role it gets. Three backends:
  boto3    network-bound calls, as when the probes run remotely (pods, nodes): the concurrency figure
  boto3+50ms  the same through a loopback proxy adding 50 ms per request: the round trip remote
           probes pay (pods and nodes reaching AWS); loopback has none and this kernel has no netem
  aws-cli  one local `aws` process per call (CPU-bound here: ~0.3 s CPU each on this 2-core machine)
A write probe is two calls in a row (put, then delete), so it is the matrix's critical path: with
enough parallel capacity the matrix takes about one write probe. The matrix is 12 probes plus the 3
identity calls, 20 AWS calls in all (writes that are allowed add a delete).

Rows are interleaved round by round (read, write, matrix, sequential, read, ...), median of --rounds (>= 5),
wall and CPU time (this process, the processes it reaps and the moto server), load average printed, the
temporary HOME removed.

    python bench/bench_verify.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rbacbridge import verify as v  # noqa: E402
from rbacbridge.config import Config  # noqa: E402
from rbacbridge.sandbox import Boto3Backend, _assume, _bootstrap_admin, _client, set_enforcement  # noqa: E402
from tests.fixtures_verify import ACCOUNT, create_managed_resources  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto did not start")


class LatencyProxy:
    """A TCP proxy on loopback that holds every client->server chunk for `latency` seconds: a
    stand-in for the network round trip real probes pay (pods and nodes reaching AWS), which this
    machine's loopback does not have (no netem qdisc here)."""

    def __init__(self, upstream_port: int, latency: float):
        self.upstream_port, self.latency = upstream_port, latency
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            for src, dst, delay in ((client, upstream, self.latency), (upstream, client, 0.0)):
                threading.Thread(target=self._pump, args=(src, dst, delay), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while data := src.recv(65536):
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def cli_backend(url: str, creds: dict[str, str], home: str) -> v.AwsCliBackend:
    env = {k: val for k, val in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=home, AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               AWS_ACCESS_KEY_ID=creds["aws_access_key_id"], AWS_SECRET_ACCESS_KEY=creds["aws_secret_access_key"],
               AWS_SESSION_TOKEN=creds["aws_session_token"])
    return v.AwsCliBackend(v.LocalRunner(env=env), "us-east-1", url)


def process_cpu(pid: int) -> float:
    """CPU seconds (own + reaped children) of another process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def interleaved(rows: dict, rounds: int, server_pid: int) -> dict[str, tuple[float, float]]:
    """(median wall, median CPU) per row; each round runs every row once, in turn."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, fn in rows.items():
            cpu0, kids0, srv0 = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN), process_cpu(server_pid)
            start = time.perf_counter()
            fn()
            wall = time.perf_counter() - start
            kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (time.process_time() - cpu0) + (kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime) \
                + (process_cpu(server_pid) - srv0)
            samples[name].append((wall, cpu))
    return {name: (statistics.median(w for w, _ in v_), statistics.median(c for _, c in v_)) for name, v_ in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=50.0, help="network delay added per request for the boto3+latency row")
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be at least 5")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  ({os.cpu_count()} CPUs; in-process floor, "
          "not the command users run: bench/bench_verify_lab.py)")
    proc, url = start_moto()
    home = tempfile.mkdtemp(prefix="rbv-bench-")
    proxy = None
    try:
        config = Config(account_id=ACCOUNT)
        create_managed_resources(url, config)
        admin = _bootstrap_admin(url, "us-east-1")
        node = _assume(_client("sts", url, "us-east-1", admin), config.role_arn(ACCOUNT, config.node_role), "bench-node")
        pod = _assume(_client("sts", url, "us-east-1", node), config.role_arn(ACCOUNT, config.pod_role), "bench-pod")
        default = _assume(_client("sts", url, "us-east-1", node), config.role_arn(ACCOUNT, config.effective_default_role), "bench-default")
        creds = {v.HOST: node, v.VANILLA: default, v.ANNOTATED: pod}  # unannotated pods get the dedicated default role
        set_enforcement(url, True)
        proxy = LatencyProxy(int(url.rsplit(":", 1)[1]), args.latency_ms / 1000)
        slow_url = f"http://127.0.0.1:{proxy.port}"
        backends = {"boto3": lambda c: Boto3Backend(url, "us-east-1", c),
                    f"boto3+{args.latency_ms:.0f}ms": lambda c: Boto3Backend(slow_url, "us-east-1", c)}
        if shutil.which("aws"):
            backends["aws-cli"] = lambda c: cli_backend(url, c, home)
        print(f"{'backend':13} {'one read':>9} {'one write':>10} {'matrix':>9} {'matrix/write':>13} {'matrix/read':>12} "
              f"{'sequential':>11}   CPU: {'read':>6} {'matrix':>7}")
        for name, make in backends.items():
            targets = [(p, make(creds[p.name])) for p in v.default_principals(config)]
            one = targets[0][1]
            one.list_bucket(config.shared_bucket)  # warm-up

            def matrix():
                result = v.run_matrix(config, ACCOUNT, "after", targets)
                assert result.ok, [(c.principal, c.check, c.bucket, c.detail) for c in result.mismatches]

            med = interleaved({
                "read": lambda: v.probe_read(one, config.shared_bucket),
                "write": lambda: v.probe_write(targets[2][1], config.tenant_bucket, v.probe_key("bench")),
                "matrix": matrix,
                "sequential": lambda: v.observe(targets, v.buckets_of(config), max_workers=1),
            }, args.rounds, proc.pid)
            (single, single_cpu), (write, _), (full, full_cpu), (serial, _) = (med[k] for k in ("read", "write", "matrix", "sequential"))
            print(f"{name:13} {single * 1000:7.0f}ms {write * 1000:8.0f}ms {full * 1000:7.0f}ms {full / write:12.1f}x "
                  f"{full / single:11.1f}x {serial * 1000:9.0f}ms        {single_cpu * 1000:5.0f}ms {full_cpu * 1000:6.0f}ms")
        print(f"(median of {args.rounds} interleaved rounds; load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
        set_enforcement(url, False)
    finally:
        if proxy is not None:
            proxy.close()
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
