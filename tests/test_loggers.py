"""`--logger tensorboard`: event files beside metrics.jsonl whose scalars equal metrics.jsonl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def _jsonl(run) -> list[dict]:
    return [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]


def _cmd(tokens, out, *extra):
    return [sys.executable, "-m", "ehrfm", "train", str(tokens), "--out", str(out), "--n-layer", "1", "--d-model", "16",
           "--n-head", "2", "--context", "32", "--tokens", "4000", "--batch-size", "8", "--eval-tokens", "2000",
           "--eval-interval", "5", "--seed", "0", *extra]


# The trainer's own environment, not the caller's: an EHRFM_LOGGER exported in the shell that runs
# the suite would give the "no logger" run a logger (ehrfm.loggers.logger_for reads it).
ENV = {k: v for k, v in os.environ.items() if k != "EHRFM_LOGGER"} | {"EHRFM_QUIET": "1"}


def _train(tokens, out, *extra):
    r = subprocess.run(_cmd(tokens, out, *extra), capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    return out


def _assert_events_equal_jsonl(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(run.glob("events.out.tfevents.*")), sorted(p.name for p in run.iterdir())
    lines = _jsonl(run)
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    keys = sorted({k for line in lines for k in line if k != "step"})
    assert sorted(acc.Tags()["scalars"]) == keys and {"train_loss", "val_loss", "lr"} <= set(keys)
    for key in keys:
        want = [(line["step"], np.float32(line[key])) for line in lines if key in line]
        got = [(e.step, np.float32(e.value)) for e in acc.Scalars(key)]
        assert got == want, key
    return acc


def test_tensorboard_scalars_equal_metrics_jsonl(synth_tokens, tmp_path):
    pytest.importorskip("tensorboard")
    acc = _assert_events_equal_jsonl(_train(synth_tokens, tmp_path / "tb", "--logger", "tensorboard"))
    assert len(acc.Scalars("val_loss")) >= 2  # the val_loss curve: periodic evals and the final one


def test_tensorboard_after_a_crash_and_resume_has_no_orphan_steps(synth_tokens, tmp_path):
    """Killed after step 5 with the checkpoint at step 4: the resumed run redoes step 5; TensorBoard
    must show it once, with the redone values, exactly as metrics.jsonl does."""
    pytest.importorskip("tensorboard")
    from ehrfm.fault_points import wait_held

    out, holds = tmp_path / "crash", tmp_path / "holds"
    cmd = _cmd(synth_tokens, out, "--logger", "tensorboard", "--checkpoint-interval", "2")
    env = {**os.environ, "EHRFM_QUIET": "1", "EHRFM_HOLD_AT": "step-6", "EHRFM_HOLD_DIR": str(holds)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_held(holds, out.name, "step-6", is_alive=lambda: proc.poll() is None)
    proc.send_signal(signal.SIGKILL)  # a crash: no checkpoint at step 5, its metrics line already logged
    proc.communicate(timeout=120)
    assert max(line["step"] for line in _jsonl(out)) == 5
    done = subprocess.run(cmd, env={**os.environ, "EHRFM_QUIET": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    steps = [line["step"] for line in _jsonl(out) if "grad_norm" in line]  # the per-step lines, not the end-of-run one
    assert steps == sorted(set(steps))  # metrics.jsonl was truncated to the checkpoint and redone
    _assert_events_equal_jsonl(out)


def test_no_logger_changes_nothing(synth_tokens, tmp_path):
    a = _train(synth_tokens, tmp_path / "plain")
    assert not list(a.glob("events.out.tfevents.*")) and not (a / "wandb").exists()
    b = _train(synth_tokens, tmp_path / "tb", "--logger", "tensorboard")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # noqa: E731 (timing)
    assert strip(_jsonl(a)) == strip(_jsonl(b))


def test_wandb_logger_refused_clearly_when_missing(synth_tokens, tmp_path):
    try:
        import wandb  # noqa: F401
        pytest.skip("wandb installed: the offline run is exercised instead by users; nothing to refuse")
    except ImportError:
        pass
    r = subprocess.run([sys.executable, "-m", "ehrfm", "train", str(synth_tokens), "--out", str(tmp_path / "w"), "--n-layer", "1",
                        "--d-model", "16", "--n-head", "2", "--tokens", "1000", "--logger", "wandb"], capture_output=True, text=True)
    assert r.returncode == 2 and "wandb" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "w").exists()


def test_sweep_runs_get_the_logger_from_the_environment(synth_tokens, tmp_path):
    """`EHRFM_LOGGER=tensorboard ehrfm sweep launch`: every run of the sweep writes its event files."""
    pytest.importorskip("tensorboard")
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    plan_sweep(synth_tokens, out=out, budgets=[1e9], sizes=2, context=64, train={"batch_size": 8})
    env = {**os.environ, "EHRFM_QUIET": "1", "EHRFM_LOGGER": "tensorboard"}
    p = subprocess.run([sys.executable, "-m", "ehrfm", "sweep", "launch", str(out), "--executor", "local"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    runs = sorted(d for d in (out / "runs").iterdir() if d.is_dir())
    assert len(runs) == 2
    for run in runs:
        _assert_events_equal_jsonl(run)


def test_sweep_launch_logger_flag_reaches_every_run(synth_tokens, tmp_path):
    """`ehrfm sweep launch --logger tensorboard`: the flag, saved in each run's config, not the environment."""
    pytest.importorskip("tensorboard")
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    plan_sweep(synth_tokens, out=out, budgets=[1e9], sizes=2, context=64, train={"batch_size": 8})
    env = {k: v for k, v in os.environ.items() if k != "EHRFM_LOGGER"} | {"EHRFM_QUIET": "1"}
    p = subprocess.run([sys.executable, "-m", "ehrfm", "sweep", "launch", str(out), "--executor", "local",
                        "--logger", "tensorboard"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    runs = sorted(d for d in (out / "runs").iterdir() if d.is_dir())
    assert len(runs) == 2
    for run in runs:
        _assert_events_equal_jsonl(run)
        assert json.loads((out / "jobs" / f"{run.name}.train.json").read_text())["extra"]["logger"] == "tensorboard"


def _kill_at(cmd, out, holds, point, env=ENV):
    """Run `cmd` until it holds at `point`, then SIGKILL it (a crash at an exact moment, never a race)."""
    from ehrfm.fault_points import wait_held

    env = {**env, "EHRFM_HOLD_AT": point, "EHRFM_HOLD_DIR": str(holds)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_held(holds, out.name, point, is_alive=lambda: proc.poll() is None)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)


@pytest.mark.parametrize("point", ["step-6", "final-checkpoint"])
def test_tensorboard_after_a_crash_equals_the_uninterrupted_run(synth_tokens, tmp_path, point):
    """A crash before any checkpoint (resume from step 0) or after the end-of-run line (resume at the
    last step, which writes that line again): TensorBoard shows each logged value once, exactly as
    metrics.jsonl and the uninterrupted run do. Before 2026-12-03 both showed the lost session's
    values and the redone ones (TensorBoard was purged only after metrics.jsonl's last kept step)."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "crash"
    cmd = _cmd(synth_tokens, out, "--logger", "tensorboard")
    _kill_at(cmd, out, tmp_path / "holds", point)
    assert list(out.glob("events.out.tfevents.*")) and not (out / "result.json").exists()
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    _assert_events_equal_jsonl(out)
    whole = _train(synth_tokens, tmp_path / "whole", "--logger", "tensorboard")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # noqa: E731 (timing)
    assert strip(_jsonl(out)) == strip(_jsonl(whole))


FAKE_WANDB = str(Path(__file__).parent / "fake_wandb")  # tests/fake_wandb/wandb: records W&B calls


def _wandb_sessions(run) -> list[list[dict]]:
    """The calls each session made to (the fake) W&B: one list per wandb.init."""
    sessions = []
    for call in map(json.loads, (run / "wandb" / "fake_calls.jsonl").read_text().splitlines()):
        if call["call"] == "init":
            sessions.append([])
        sessions[-1].append(call)
    return sessions


@pytest.mark.parametrize("point", ["step-7", "final-checkpoint"])
def test_wandb_after_a_crash_resumes_one_run_and_sends_each_line_once(synth_tokens, tmp_path, point):
    """Killed mid-run (checkpoint at step 4, steps 5 and 6 logged) or after the end-of-run line: the
    resumed session opens the same W&B run (its id, resume="allow") and sends only the lines the lost
    session had not, so W&B holds metrics.jsonl's lines once each, at monotone steps. Before 2026-12-03
    each session was a new W&B run and the redone steps were sent twice."""
    out = tmp_path / "crash"
    env = {**ENV, "PYTHONPATH": os.pathsep.join([FAKE_WANDB, os.environ.get("PYTHONPATH", "")])}
    cmd = _cmd(synth_tokens, out, "--logger", "wandb", "--checkpoint-interval", "4")
    _kill_at(cmd, out, tmp_path / "holds", point, env)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    sessions = _wandb_sessions(out)
    assert len(sessions) == 2 and sessions[0][0]["id"] and {s[0]["id"] for s in sessions} == {sessions[0][0]["id"]}
    assert {s[0]["resume"] for s in sessions} == {"allow"}
    sent = [c for s in sessions for c in s if c["call"] == "log"]
    timing = "tokens_per_s"  # a wall-clock rate: the lost session's, where it sent the line
    want = [(line["step"], {k: v for k, v in line.items() if k not in ("step", timing) and v is not None})
            for line in _jsonl(out)]
    assert [(c["step"], {k: v for k, v in c["data"].items() if k != timing}) for c in sent] == want
    if point == "step-7":
        assert [c["step"] for c in sessions[0] if c["call"] == "log"][-1] == 6  # sent before the kill, not again


def test_tensorboard_turned_on_at_a_resume_gets_the_kept_lines_too(synth_tokens, tmp_path):
    """A run stopped (SIGTERM: checkpoint, exit 3) without a logger and resumed with --logger
    tensorboard: its event files hold every metrics.jsonl line, the first session's too."""
    pytest.importorskip("tensorboard")
    from ehrfm.fault_points import wait_held

    out, holds = tmp_path / "late", tmp_path / "holds"
    proc = subprocess.Popen(_cmd(synth_tokens, out), env={**ENV, "EHRFM_HOLD_AT": "step-6", "EHRFM_HOLD_DIR": str(holds)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_held(holds, out.name, "step-6", is_alive=lambda: proc.poll() is None)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 3 and not list(out.glob("events.out.tfevents.*"))
    _train(synth_tokens, out, "--logger", "tensorboard")
    _assert_events_equal_jsonl(out)
