"""`rbacbridge demo` runs end to end as a user would run it, and says it is a sandbox."""

import os
import subprocess
import sys


def test_demo_runs_and_leaves_nothing():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "rbacbridge", "demo"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "SANDBOX" in out and "No real account" in out
    assert "0 changes planned, 0 mutating AWS calls made." in out
    assert "rbacbridge-owned resources left: 0" in out
    assert "legacy-node-profile (restored)" in out
