"""A stand-in for the wandb package, for the tests of `--logger wandb` where wandb is not installed.

It records what the trainer asks of W&B (init's arguments; each log, with its step; finish) as JSON
lines in DIR/wandb/fake_calls.jsonl (DIR: init's `dir`), each line flushed at once so that a killed
session's calls stay, as a real offline run's fragment does. Like wandb, it rejects a step lower
than the run's last one (wandb drops it with a warning; steps must increase monotonically).
Put its parent directory first on PYTHONPATH to use it.
"""

from __future__ import annotations

import json
from pathlib import Path

__version__ = "0.0.0-fake"


class _Run:
    def __init__(self, record: Path, run_id: str):
        self.record, self.id, self.step = record, run_id, 0

    def _write(self, obj: dict) -> None:
        with open(self.record, "a") as f:
            f.write(json.dumps(obj) + "\n")

    def log(self, data: dict, step: int | None = None) -> None:
        if step is not None and step < self.step:
            raise ValueError(f"step {step} is less than the current step {self.step}")
        self.step = self.step if step is None else step
        self._write({"call": "log", "data": data, "step": step})

    def finish(self) -> None:
        self._write({"call": "finish"})


def init(**kwargs) -> _Run:
    record = Path(kwargs["dir"]) / "wandb" / "fake_calls.jsonl"
    record.parent.mkdir(parents=True, exist_ok=True)
    run = _Run(record, kwargs.get("id") or "random")
    run._write({"call": "init", **{k: kwargs.get(k) for k in ("mode", "id", "resume", "name", "group")}})
    return run
