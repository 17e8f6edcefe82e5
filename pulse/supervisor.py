"""`pulse run`: start each pipeline stage as a child process, report progress, stop them all together.

The stages are separate ``pulse`` processes exactly as in production (one topic in, one out each);
this module only spawns, watches and stops them, so it imports none of them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from pulse.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Stage:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of this process's environment
    proc: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = field(default=None, repr=False)


def pulse_command(*args: str) -> list[str]:
    """argv for a `pulse` sub-command run with this interpreter (works without the console script)."""
    return [sys.executable, "-m", "pulse.cli", *args]


def topic_totals(admin_consumer: Consumer, admin: AdminClient, names: Sequence[str]) -> dict[str, int]:
    """Records ever written per topic: the sum of high watermarks (cheap, no consumption)."""
    metadata = admin.list_topics(timeout=5).topics
    totals: dict[str, int] = {}
    for name in names:
        total = 0
        for pid in metadata[name].partitions if name in metadata else {}:
            _low, high = admin_consumer.get_watermark_offsets(TopicPartition(name, pid), timeout=5)
            total += max(high, 0)
        totals[name] = total
    return totals


def format_progress(
    totals: dict[str, int], previous: dict[str, int], seconds: float, names: dict[str, str]
) -> str:
    """One status line: per topic role, total records and the rate since the last line."""
    parts = []
    for role, topic in names.items():
        now = totals.get(topic, 0)
        rate = (now - previous.get(topic, now)) / seconds if seconds > 0 else 0.0
        parts.append(f"{role}={now} (+{rate:.0f}/s)")
    return "  ".join(parts)


class Supervisor:
    """Runs stages until one exits, a signal arrives, or ``duration_s`` passes."""

    def __init__(self, settings: Settings, stages: list[Stage], log_dir: Path) -> None:
        self.settings = settings
        self.stages = stages
        self.log_dir = log_dir
        self._stop = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop = True

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for stage in self.stages:
            path = self.log_dir / f"{stage.name}.log"
            stage.log_file = path.open("ab")
            stage.proc = subprocess.Popen(
                stage.argv,
                stdin=subprocess.DEVNULL,
                stdout=stage.log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **stage.env} if stage.env else None,
            )
            print(f"started {stage.name:10} pid {stage.proc.pid:<7} log {path}")

    def run(
        self, duration_s: float | None, interval_s: float = 5.0, report: Callable[[str], None] = print
    ) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self.start()
        names = {
            "raw": self.settings.topics.raw,
            "enriched": self.settings.topics.enriched,
            "trends": self.settings.topics.trends,
            "alerts": self.settings.topics.alerts,
            "dlq": self.settings.topics.dlq,
        }
        admin = AdminClient(self.settings.kafka.config())
        watcher = Consumer(self.settings.kafka.config(**{"group.id": "pulse-run-watch"}))
        began = last = time.monotonic()
        previous = topic_totals(watcher, admin, list(names.values()))
        code = 0
        try:
            while not self._stop:
                time.sleep(0.2)
                failed = [s for s in self.stages if s.proc is not None and s.proc.poll() is not None]
                if failed:
                    for stage in failed:
                        assert stage.proc is not None
                        report(
                            f"stage {stage.name} exited with code {stage.proc.returncode}; "
                            f"see {self.log_dir / (stage.name + '.log')}"
                        )
                    code = max(s.proc.returncode or 0 for s in failed if s.proc) or 1
                    break
                now = time.monotonic()
                if now - last >= interval_s:
                    totals = topic_totals(watcher, admin, list(names.values()))
                    report(format_progress(totals, previous, now - last, names))
                    previous, last = totals, now
                if duration_s is not None and now - began >= duration_s:
                    break
        finally:
            watcher.close()
            self.stop()
        return code

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every stage (they drain and flush), then SIGKILL what is still there."""
        for stage in self.stages:
            if stage.proc is not None and stage.proc.poll() is None:
                stage.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for stage in self.stages:
            if stage.proc is None:
                continue
            try:
                stage.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                stage.proc.kill()
                stage.proc.wait()
            print(f"stopped {stage.name:10} exit code {stage.proc.returncode}")
            if stage.log_file is not None:
                stage.log_file.close()
