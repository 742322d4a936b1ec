"""`--logger tensorboard`: event files beside metrics.jsonl whose scalars equal metrics.jsonl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

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
