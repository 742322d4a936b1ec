"""Named points where a test can hold a running process, to inject a fault at an exact moment.

Tests that interrupt a run (a signal, `scontrol requeue`, SIGKILL) must not race the run: a small
run may finish before the interruption arrives, or the interruption may land at another step than
intended. Instead the test names a point and a directory in the environment of the process under
test (which SLURM, submitit and the sweep job pass on to the trainer unchanged):

    EHRFM_HOLD_AT=step-5[,checkpoint-swap]   points to hold at (comma-separated)

Points: `step-K` (the trainer, after step K's gradients; key: the run dir's name),
`checkpoint-swap` (ehrfm.checkpoint, between moving the old checkpoint aside and moving the new
one in; key: the run dir's name), `eval-K` (the trainer, during the periodic eval after step K),
`final-eval` (the trainer, its final checkpoint written, the final eval under way),
`trainer-start` (sweeps.run_one) and `train-start` (`ehrfm train`): before torch is imported, no stop
handler of `train` yet (key: the run dir's name),
`job-start` (sweeps.job.TrainJob, unpickled in its job process, before any signal handler; key: the run id),
`final-checkpoint` (the trainer, its final checkpoint written,
result.json not yet; key: the run dir's name), `atomic-dir` (ehrfm.io.atomic_dir, the output complete in its
temporary, before the rename; key: the output's name), `etl-table` (tokenization.etl, a table partly
staged, in a worker process with --workers > 1; key: the table's name with `/` as `__`, e.g.
`hosp__labevents`), `etl-staged` (tokenization.etl's main process, every table staged and the workers
idle, no shard written; key: the output's name).
    EHRFM_HOLD_DIR=/some/dir                 where the hold is announced and released

At a named point the process writes `<dir>/<key>.<point>.held` (JSON: pid, point) and waits until
`<dir>/<key>.<point>.release` exists or `stop` is set (the trainer's stop flag, so a stop signal
ends the hold at once). `key` names the run (its run dir's name). The test waits for the `.held`
file, injects its fault, and creates `.release` if the process should go on. Unset, a point costs
one dict lookup. Nothing outside tests sets these variables.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

HOLD_AT_ENV = "EHRFM_HOLD_AT"
HOLD_DIR_ENV = "EHRFM_HOLD_DIR"
# A held process re-checks its release file at this interval (seconds): only how fast a held
# process notices the release, never whether the test's fault lands at the named point.
_POLL_S = 0.02


def armed(point: str) -> bool:
    """True when this process was asked to hold at `point`."""
    points = os.environ.get(HOLD_AT_ENV)
    return bool(points) and point in points.split(",") and bool(os.environ.get(HOLD_DIR_ENV))


def hold(point: str, key: str, stop=None) -> None:
    """Announce `point` for `key` and block until the test releases it (or `stop` is set).

    Args:
        point: the point's name, e.g. "step-5" (after optimizer step 5, before the stop check).
        key: what is held, e.g. the run dir's name; distinguishes runs sharing one hold dir.
        stop: anything with is_set() (threading.Event, ehrfm.train.StopFlag) that ends the hold early
            (the trainer's stop request).
    """
    if not armed(point):
        return
    hold_dir = Path(os.environ[HOLD_DIR_ENV])
    hold_dir.mkdir(parents=True, exist_ok=True)
    held, release = hold_dir / f"{key}.{point}.held", hold_dir / f"{key}.{point}.release"
    if release.exists():  # released before (e.g. a resumed attempt passing the same point)
        return
    tmp = held.with_name(held.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"pid": os.getpid(), "point": point}), encoding="utf-8")
    os.replace(tmp, held)
    # Sleep, never `stop.wait()`: the stop flag is set by a signal handler running in this same
    # thread, and Event.set() from inside Event.wait() deadlocks on the event's own lock.
    while not release.exists() and not (stop is not None and stop.is_set()):
        time.sleep(_POLL_S)


def wait_held(hold_dir: str | os.PathLike, key: str, point: str, is_alive=lambda: True, timeout_s: float = 600) -> dict:
    """Test side: wait until `key` is held at `point`; returns the held file's JSON (pid, point).

    Raises AssertionError if `is_alive()` turns false first (the process ended without reaching
    the point) or after `timeout_s` (a hung process; generous, never what decides a test).
    """
    held = Path(hold_dir) / f"{key}.{point}.held"
    deadline = time.monotonic() + timeout_s
    while not held.is_file():
        if not is_alive():
            raise AssertionError(f"{key} ended before reaching hold point {point}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} did not reach hold point {point} within {timeout_s:.0f} s")
        time.sleep(_POLL_S)
    return json.loads(held.read_text(encoding="utf-8"))


def release(hold_dir: str | os.PathLike, key: str, point: str) -> None:
    """Test side: let `key` go on past `point` (now, and on any later attempt)."""
    path = Path(hold_dir) / f"{key}.{point}.release"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
