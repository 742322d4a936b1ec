"""Child process of a sweep job: `python -m sweeps.run_one CONFIG.json` trains one run.

CONFIG.json is a TrainConfig (as JSON). This calls ehrfm's public `train` (which installs its
SIGTERM/SIGUSR1 checkpoint handlers) and turns the outcome into an exit code for the job wrapper
(sweeps/job.py), the same codes as `ehrfm train`:
    0  completed or diverged (result.json written)     3  interrupted (checkpoint written)
    1  failed (result.json written by the trainer)      2  refused (UserError, nothing written)
    4  busy: another trainer holds the run dir (ehrfm.run_lock); nothing written, not a failure
    5  gone: the run dir was deleted, moved or replaced while training; nothing written into it
Under DDP (RANK/WORLD_SIZE set by the wrapper) every rank runs this; rank 0 writes the files.

A stop signal (SIGTERM, SIGUSR1) that arrives before `train` installs its handlers, while this
process imports torch, is kept and honoured: exit 3 before training, the run dir untouched.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from ehrfm import fault_points
from ehrfm.results import Status

EXIT_CODES = {Status.COMPLETED: 0, Status.DIVERGED: 0, Status.FAILED: 1, Status.INTERRUPTED: 3}
EXIT_BUSY = 4
EXIT_GONE = 5


def main(argv: list[str] | None = None) -> int:
    """Train the run of TrainConfig JSON file argv[0] and return the exit code of the module docstring.

    Args:
        argv: [CONFIG.json] (default: sys.argv[1:]).

    Returns:
        0 completed or diverged, 1 failed (or any other status), 2 refused (bad usage or UserError),
        3 interrupted, 4 busy (another trainer holds the run dir).
    """
    # First of all: a stop (scancel, scontrol requeue, preemption, a forwarded Ctrl-C) may come in the
    # seconds this process spends importing torch, before `train` installs its handlers. It killed
    # the trainer (signal 15) and the job recorded the run failed, while the same signal a moment
    # later checkpointed it as interrupted. It is kept here, and honoured before training.
    early_stop = _EarlyStop()
    for s in _STOPS:
        signal.signal(s, early_stop.set)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m sweeps.run_one CONFIG.json", file=sys.stderr)
        return 2
    if fault_points.armed("trainer-start"):  # a test holds the trainer here, before torch is imported
        fault_points.hold("trainer-start", Path(json.loads(Path(argv[0]).read_text(encoding="utf-8"))["out_dir"]).name, early_stop)
    from ehrfm.config import TrainConfig
    from ehrfm.errors import UserError
    from ehrfm.io import keep_sigint_ignored
    from ehrfm.run_lock import RunDirBusyError, RunDirGoneError

    keep_sigint_ignored()  # Ctrl-C stays ignored here, as the job wrapper set it (_trainer_signals)

    threads = os.environ.get("EHRFM_NUM_THREADS")
    try:
        raw = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        # SWEEP/jobs/<run>.train.json deleted or damaged after the launch: a traceback in the job's log and no remedy
        why = e.strerror if isinstance(e, OSError) and e.strerror else "not valid JSON" if isinstance(e, ValueError) else e
        print(f"ehrfm train: error: job file {argv[0]} cannot be read ({why}; deleted or edited after the launch?): "
              f"write it again with `ehrfm sweep launch {Path(argv[0]).resolve().parent.parent} --retry-failed`",
              file=sys.stderr)
        return 2
    try:
        cfg = TrainConfig.from_dict(raw)
        import torch

        if threads:
            # One job's share of the machine's cores, so parallel jobs do not oversubscribe them.
            torch.set_num_threads(int(threads))
        from ehrfm.train import request_stop, train

        for s in _STOPS:  # from here a stop reaches the trainer's own flag, which `train` checks between steps
            signal.signal(s, lambda signum, frame: request_stop())
        if early_stop.is_set():
            print(f"run_one: {cfg.out_dir}: stopped (signal {early_stop.signum}) before training; a rerun resumes it",
                  flush=True)
            return EXIT_CODES[Status.INTERRUPTED]
        result = train(cfg)
    except RunDirBusyError as e:
        print(f"ehrfm train: {e}", file=sys.stderr)
        return EXIT_BUSY
    except RunDirGoneError as e:
        print(f"ehrfm train: error: {e}", file=sys.stderr)
        return EXIT_GONE
    except UserError as e:
        print(f"ehrfm train: error: {e}", file=sys.stderr)
        return 2
    status = result.get("status")
    print(f"run_one: {cfg.out_dir}: {status}" + (f" ({result.get('error')})" if result.get("error") else ""), flush=True)
    return EXIT_CODES.get(status, 1)


_STOPS = (signal.SIGTERM, signal.SIGUSR1)  # ehrfm.train.STOP_SIGNALS, without importing torch


class _EarlyStop:
    """A stop signal received before `train` runs (a plain attribute: safe in a handler)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def set(self, signum=signal.SIGTERM, frame=None) -> None:
        self.signum = int(signum)

    def is_set(self) -> bool:
        return self.signum is not None


if __name__ == "__main__":
    sys.exit(main())
