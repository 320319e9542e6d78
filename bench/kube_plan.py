"""Time the kube part's plan / setup / no-op re-plan against the test API server on loopback.

In process (the API server's threads are this process too, so CPU time counts both sides). One row is
repeated (the no-op re-plan, median of >= 5), so there is nothing to interleave; the first plan and the
setup happen once by nature. Wall and CPU time, load average printed, the kubeconfig's temp dir removed.

    python bench/kube_plan.py [rounds]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rbacbridge import planner  # noqa: E402
from rbacbridge.config import Config  # noqa: E402
from rbacbridge.planner import Context  # noqa: E402
from tests.fixtures_kube import write_kubeconfig  # noqa: E402
from tests.kube_apiserver import KubeApiServer  # noqa: E402


def main(rounds: int = 20) -> None:
    if rounds < 5:
        raise SystemExit("rounds must be at least 5")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    server = KubeApiServer().start()
    server.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = write_kubeconfig(Path(tmp) / "kc", {"bench": server.url}, "bench")
        config = Config(account_id="123456789012", kubeconfig=str(kubeconfig))
        ctx = Context(config, parts=("kube",))
        start = time.perf_counter()
        plan = planner.plan_setup(ctx)
        first_plan = time.perf_counter() - start
        start = time.perf_counter()
        assert planner.run(ctx, plan).ok
        setup = time.perf_counter() - start
        times, cpus, requests = [], [], []
        for _ in range(rounds):
            before = len(server.store.requests)
            ctx = Context(config, parts=("kube",))
            start, cpu = time.perf_counter(), time.process_time()
            plan = planner.plan_setup(ctx)
            times.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
            requests.append(len(server.store.requests) - before)
            assert not plan.changes
    server.stop()
    print(f"first plan (client load + 8 reads): {first_plan * 1000:.0f} ms")
    print(f"setup (7 server-side applies + rollout check): {setup * 1000:.0f} ms")
    print(f"no-op re-plan: median {statistics.median(times) * 1000:.1f} ms wall, {statistics.median(cpus) * 1000:.1f} ms CPU "
          f"over {rounds} runs, {requests[0]} GETs, 0 PATCHes")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
