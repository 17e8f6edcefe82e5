"""The fault drill's short version (`make drill` runs the long one): every step, a few thousand posts.

It runs `bench/drill.py --short` as a user runs `make drill`: its own broker and Redis, the real
stages and models, one fault per step (inference and streams SIGKILLed, a streams worker's partitions
taken over, the broker restarted, Redis flushed and rebuilt, Redis away, hostile records), and after
each step a reconciliation of Redis counts and topic contents against the input. A regression in any
guarantee fails here with the step's row and what went wrong.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DRILL = Path(__file__).resolve().parents[2] / "bench" / "drill.py"
STEPS = ("baseline", "kill-inference", "kill-streams", "takeover", "broker-restart", "redis-flush",
         "redis-outage", "hostile", "settle+stop")  # fmt: skip

pytestmark = pytest.mark.timeout(1200)


def test_the_short_fault_drill_passes_every_step() -> None:
    done = subprocess.run(
        [sys.executable, str(DRILL), "--short"], capture_output=True, text=True, timeout=1100
    )
    table = [line for line in done.stdout.splitlines() if not line.startswith("%")]
    print("\n".join(table))
    rows = {line.split()[0]: line.split()[1] for line in table if line and line.split()[0] in STEPS}
    assert rows == dict.fromkeys(STEPS, "pass"), "\n".join(table) + done.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "drill passed: 9/9 steps" in done.stdout
