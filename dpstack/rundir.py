"""A run directory's two rules: a new run never starts over an old one, and every invocation of a training
command is appended to the run's own `commands.jsonl`, so its numbers trace back to the exact commands."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from dpstack.errors import ConfigError

COMMAND_LOG = "commands.jsonl"


def check_fresh(out: Path, resume: bool) -> None:
    """Refuse a new run in `out` when it holds a run (its command log alone is not one: a failed start)."""
    if not resume and out.exists() and any(entry.name != COMMAND_LOG for entry in out.iterdir()):
        raise ConfigError(f"{out}: already holds a run; pass resume=true to continue it or choose a new out")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class CommandLog:
    """`<out>/commands.jsonl` of one invocation: a "start" line before the command runs (`out` is made for
    it, so a run killed by any signal still names its command) and an "end" line with how it ended (none
    after a kill). Rank 0 only; nothing without an `out`."""

    def __init__(self, out: str, argv: list[str]) -> None:
        self.path = Path(out) / COMMAND_LOG
        self.record = {"argv": argv, "started": _now()}
        self.enabled = bool(out) and os.environ.get("RANK", "0") == "0"
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"event": "start", **self.record})

    def end(self, how: str) -> None:
        if self.enabled and self.path.parent.is_dir():
            self._append({"event": "end", **self.record, "ended": _now(), "exit": how})

    def _append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
