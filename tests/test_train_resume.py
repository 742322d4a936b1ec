"""Faults: SIGTERM/SIGUSR1/a first Ctrl-C -> checkpoint, exit 3, bit-identical resume; divergence; refusals."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train import make_token_dir

from ehrfm.config import TrainConfig
from ehrfm.errors import UserError
from ehrfm.fault_points import wait_held
from ehrfm.train import request_stop, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SHAPE = ["--n-layer", "2", "--d-model", "32", "--n-head", "2", "--context", "64"]


def run_cmd(tok, out, tokens=20_000):
    return [sys.executable, "-m", "ehrfm", "train", str(tok), "--out", str(out), *SHAPE,
            "--tokens", str(tokens), "--batch-size", "4", "--lr", "3e-3", "--eval-tokens", "4096", "--seed", "3"]


ENV = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"}


def tensors(path):
    return load_file(str(path))


def assert_same_tensors(a: Path, b: Path):
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def metrics(run):
    drop = ("tokens_per_s",)
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(run_cmd(tok, out), env=ENV, check=True, capture_output=True)
    return out


# SIGINT: a first Ctrl-C; SIGHUP: a closed terminal (before: the run died without a checkpoint)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP])
def test_kill_at_random_step_then_resume_is_bit_identical(tok, reference, tmp_path, sig):
    ref = json.loads((reference / "result.json").read_text())
    # A step drawn from a seed fixed per signal: the same step on every run of the suite (a failure
    # reproduces), and a different one for each signal.
    kill_after = random.Random(f"kill-{sig.name}").randrange(2, ref["steps"] // 2)
    out, holds = tmp_path / "run", tmp_path / "holds"
    # The trainer holds after step kill_after until the signal arrives (ehrfm.fault_points): no race.
    hold_env = dict(ENV, EHRFM_HOLD_AT=f"step-{kill_after}", EHRFM_HOLD_DIR=str(holds))
    # SIGINT and SIGHUP as a terminal's foreground command has them (a shell's background job or nohup ignores them)
    proc = subprocess.Popen(run_cmd(tok, out), env=hold_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGHUP, signal.SIGINT)])
    wait_held(holds, out.name, f"step-{kill_after}", is_alive=lambda: proc.poll() is None)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, (kill_after, proc.returncode, err.decode()[-500:])
    assert not (out / "result.json").exists()
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == kill_after, (kill_after, state)

    done = subprocess.run(run_cmd(tok, out), env=ENV, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-500:]
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "completed" and res["val_loss"] == ref["val_loss"], (kill_after, res["val_loss"], ref["val_loss"])
    assert_same_tensors(out / "checkpoint" / "model.safetensors", reference / "checkpoint" / "model.safetensors")
    assert_same_tensors(out / "checkpoint" / "optimizer.safetensors", reference / "checkpoint" / "optimizer.safetensors")
    assert metrics(out) == metrics(reference)  # logged history redone exactly, no duplicate lines


def test_request_stop_in_process_then_resume(tok, tmp_path):
    """The in-process stop (for launchers running train in their own process): same contract."""
    kw = dict(tokens_dir=str(tok), n_layer=2, d_model=32, n_head=2, context=64, tokens=6_000,
              batch_size=4, lr=3e-3, eval_tokens=2048, seed=1)
    whole = train(TrainConfig(out_dir=str(tmp_path / "whole"), **kw))
    request_stop()  # requested before the first step ends: stops after step 1
    first = train(TrainConfig(out_dir=str(tmp_path / "a"), **kw))
    assert first["status"] == "interrupted" and first["step"] == 1
    assert not (tmp_path / "a" / "result.json").exists()
    resumed = train(TrainConfig(out_dir=str(tmp_path / "a"), **kw))  # the flag was cleared on return
    assert resumed["status"] == "completed" and resumed["val_loss"] == whole["val_loss"]
    assert_same_tensors(tmp_path / "a" / "checkpoint" / "model.safetensors", tmp_path / "whole" / "checkpoint" / "model.safetensors")


def test_diverged_run_is_recorded_with_step(tok, tmp_path):
    res = train(TrainConfig(tokens_dir=str(tok), out_dir=str(tmp_path / "run"), n_layer=2, d_model=32, n_head=2,
                            context=64, tokens=20_000, batch_size=4, lr=1e9, grad_clip=0.0, warmup_frac=0.0,
                            eval_tokens=1024))
    assert res["status"] == "diverged" and res["diverged_step"] >= 2
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert on_disk["status"] == "diverged" and on_disk["diverged_step"] == res["diverged_step"]
    # Each non-finite quantity is named (not "loss became <number>"), and the step is logged.
    assert on_disk["error"] == f"train loss became nan and grad norm became nan at step {res['diverged_step']}"
    assert on_disk["val_loss"] is None
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == res["diverged_step"] and last["diverged"] == on_disk["error"]
    assert last["grad_norm"] is None and last["train_loss"] is None  # strict JSON: non-finite as null
    cli = subprocess.run([sys.executable, "-m", "ehrfm", "train", str(tok), "--out", str(tmp_path / "run"), *SHAPE,
                          "--tokens", "20000", "--batch-size", "4", "--lr", "1e9", "--grad-clip", "0",
                          "--warmup-frac", "0", "--eval-tokens", "1024"], env=ENV, capture_output=True, text=True)
    assert cli.returncode == 1 and "diverged" in cli.stderr  # rerun: the recorded outcome, not a retrain


def test_failed_run_is_recorded(tok, tmp_path, monkeypatch):
    import ehrfm.train as T

    def broken(*a, **k):
        raise RuntimeError("simulated out of memory")

    monkeypatch.setattr(T, "evaluate", broken)  # fault injection: the final eval fails
    res = train(TrainConfig(tokens_dir=str(tok), out_dir=str(tmp_path / "run"), n_layer=1, d_model=32, n_head=2,
                            context=64, tokens=2000, batch_size=4, eval_tokens=1024))
    assert res["status"] == "failed" and res["error"] == "RuntimeError: simulated out of memory"
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "failed"
    monkeypatch.undo()  # a failed run is retried when launched again
    again = train(TrainConfig(tokens_dir=str(tok), out_dir=str(tmp_path / "run"), n_layer=1, d_model=32, n_head=2,
                              context=64, tokens=2000, batch_size=4, eval_tokens=1024))
    assert again["status"] == "completed"


def dir_digest(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def test_resume_against_other_tokenizer_or_config_is_refused(tok, tmp_path):
    out = tmp_path / "run"
    kw = dict(n_layer=2, d_model=32, n_head=2, context=64, tokens=4_000, batch_size=4, eval_tokens=1024)
    request_stop()
    first = train(TrainConfig(tokens_dir=str(tok), out_dir=str(out), **kw))
    assert first["status"] == "interrupted"
    before = dir_digest(out)
    other_tok = make_token_dir(tmp_path / "other_tok", vocab_size=40, seed=5)  # same vocab size, other tokenizer
    with pytest.raises(UserError, match="tokenizer"):
        train(TrainConfig(tokens_dir=str(other_tok), out_dir=str(out), **kw))
    with pytest.raises(UserError, match="model config differs in d_model 32 in the run dir vs 64 now"):
        train(TrainConfig(tokens_dir=str(tok), out_dir=str(out), **dict(kw, d_model=64)))
    with pytest.raises(UserError, match=r"train config differs in lr 0.001 in the run dir vs 0.005 now, seed 0 in the run dir vs 9 now"):
        train(TrainConfig(tokens_dir=str(tok), out_dir=str(out), lr=5e-3, seed=9, **kw))
    assert dir_digest(out) == before  # nothing touched
    cli = subprocess.run([sys.executable, "-m", "ehrfm", "train", str(other_tok), "--out", str(out), *SHAPE,
                          "--tokens", "4000", "--batch-size", "4", "--eval-tokens", "1024"], env=ENV,
                         capture_output=True, text=True)
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1 and "tokenizer" in cli.stderr
    assert dir_digest(out) == before


def test_bad_token_dir_is_one_clear_error(tok, tmp_path):
    bad = make_token_dir(tmp_path / "bad", vocab_size=40, seed=1)
    arr = np.load(bad / "train" / "tokens.npy")
    arr[:7] = 45  # ids beyond the vocab
    np.save(bad / "train" / "tokens.npy", arr)
    with pytest.raises(UserError, match=r"train/tokens.npy has 7 token ids >= the vocab size 40"):
        train(TrainConfig(tokens_dir=str(bad), out_dir=str(tmp_path / "run"), tokens=1000, batch_size=2, context=32))
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="tokenizer.json not found"):
        train(TrainConfig(tokens_dir=str(tmp_path / "nope"), out_dir=str(tmp_path / "run"), tokens=1000))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            train(TrainConfig(tokens_dir=str(tok), out_dir=str(tmp_path / "run"), tokens=1000, device="cuda"))
    with pytest.raises(UserError, match="less than one token"):
        train(TrainConfig(tokens_dir=str(tok), out_dir=str(tmp_path / "run"), flops=10.0))
    assert not (tmp_path / "run").exists()


def test_second_trainer_on_a_run_dir_is_refused(tok, reference, tmp_path):
    """The first trainer holds at step 2 (ehrfm.fault_points); a second `ehrfm train` on its run dir,
    with or without --overwrite, is refused with one line and changes nothing; the first then
    finishes exactly like an uninterrupted run."""
    from ehrfm.fault_points import release
    from ehrfm.run_lock import run_dir_busy

    out, holds = tmp_path / "run", tmp_path / "holds"
    first = subprocess.Popen(run_cmd(tok, out), env=dict(ENV, EHRFM_HOLD_AT="step-2", EHRFM_HOLD_DIR=str(holds)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_held(holds, out.name, "step-2", is_alive=lambda: first.poll() is None)
        assert run_dir_busy(out)
        before = dir_digest(out)
        for extra in ([], ["--overwrite"]):
            second = subprocess.run(run_cmd(tok, out) + extra, env=ENV, capture_output=True, text=True)
            assert second.returncode == 2, second.stderr
            assert second.stderr.count("\n") == 1 and f"run dir {out} is being trained by another process" in second.stderr
            assert dir_digest(out) == before
        release(holds, out.name, "step-2")
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err.decode()[-1000:]
    assert not run_dir_busy(out)  # released when the trainer ended
    res = json.loads((out / "result.json").read_text())
    assert res["val_loss"] == json.loads((reference / "result.json").read_text())["val_loss"]
    assert metrics(out) == metrics(reference)  # one trainer wrote metrics.jsonl, no interleaved lines


@pytest.mark.parametrize("option, value, message", [
    ("lr", -1.0, "lr must be finite and > 0 (got -1)"),
    ("lr", float("nan"), "lr must be finite and > 0 (got nan)"),
    ("eval_tokens", 0, "eval_tokens must be >= 1 (got 0)"),
    ("weight_decay", -1.0, "weight_decay must be finite and >= 0 (got -1)"),
    ("grad_clip", -1.0, "grad_clip must be finite and >= 0 (got -1)"),
])
def test_nonsense_optimiser_settings_are_refused_before_anything_is_written(tok, tmp_path, option, value, message):
    """Before: a negative lr ran and was recorded as a failed run, eval_tokens 0 as diverged, a
    negative grad_clip silently meant no clipping. A bad flag is a usage error (exit 2), not a run."""
    with pytest.raises(UserError, match=re.escape(message)):
        TrainConfig(tokens_dir=str(tok), out_dir=str(tmp_path / "run"), tokens=1000, **{option: value})
    flag = "--" + option.replace("_", "-")
    p = subprocess.run([sys.executable, "-m", "ehrfm", "train", str(tok), "--out", str(tmp_path / "run"), *SHAPE,
                        "--tokens", "1000", flag, str(value)], env=ENV, capture_output=True, text=True)
    assert p.returncode == 2 and message in p.stderr and not (tmp_path / "run").exists()


def test_a_resume_that_changes_the_micro_batch_says_it_is_not_bit_identical(tok, tmp_path, capsys):
    """--micro-batch-size may change at a resume (e.g. after running out of memory), but the gradients are
    then summed in another order: the run ended ~1e-9 away from the uninterrupted one, silently, where the
    README promises bit-identical resumes. Now the resume says so in one warning; unchanged, nothing."""
    kw = dict(tokens_dir=str(tok), n_layer=1, d_model=32, n_head=2, context=64, tokens=3_000, batch_size=4,
              eval_tokens=1024, seed=1)
    for name, micro in (("same", 0), ("changed", 2)):
        request_stop()
        assert train(TrainConfig(out_dir=str(tmp_path / name), **kw))["status"] == "interrupted"
        capsys.readouterr()
        assert train(TrainConfig(out_dir=str(tmp_path / name), micro_batch_size=micro, **kw))["status"] == "completed"
        said = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
        if name == "same":
            assert said == []
        else:
            assert said == [f"ehrfm: warning: resuming {tmp_path / name} with micro-batch-size 4 -> 2, eval-batch-size 4 -> 2: "
                            "the same run, but not bit-identical to one run without the change (floating-point sums in "
                            "another order); keep the settings to reproduce it exactly"]


def test_a_resume_under_another_torch_says_it_is_not_bit_identical(tok, tmp_path, capsys):
    """config.json records the torch that began the run: a resume after upgrading torch (other kernels, sums in
    another order) reached a different loss with no word, where the README promises bit-identical resumes."""
    import torch

    kw = dict(tokens_dir=str(tok), out_dir=str(tmp_path / "run"), n_layer=1, d_model=32, n_head=2, context=64,
              tokens=3_000, batch_size=4, eval_tokens=1024, seed=1)
    request_stop()
    assert train(TrainConfig(**kw))["status"] == "interrupted"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["torch_version"] == torch.__version__
    (tmp_path / "run" / "config.json").write_text(json.dumps({**config, "torch_version": "2.0.0"}))
    capsys.readouterr()
    assert train(TrainConfig(**kw))["status"] == "completed"
    said = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert said == [f"ehrfm: warning: resuming {tmp_path / 'run'} with torch 2.0.0 -> {torch.__version__}: the same run, "
                    "but not bit-identical to one run without the change (floating-point sums in another order); keep "
                    "the settings to reproduce it exactly"]


def test_a_checkpoint_that_cannot_be_written_names_itself(tok, tmp_path):
    """A write limit (`ulimit -f`; a full quota fails alike) made the run fail with "SafetensorError: ...
    File too large (os error 27)": no path, so no way to tell which disk. Now the run's error names the
    checkpoint and the errno, and the run is recorded failed (a retry without the limit resumes it)."""
    import resource

    out = tmp_path / "run"
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (128 * 1024, resource.RLIM_INFINITY))  # noqa: E731
    p = subprocess.run(run_cmd(tok, out, tokens=2_000), env=ENV, capture_output=True, text=True, preexec_fn=limit)
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and result["error"] == f"OSError: [Errno 27] File too large: '{out / 'checkpoint'}'", p.stderr[-800:]
    assert not list(out.glob("checkpoint*")), sorted(x.name for x in out.iterdir())  # no temporary left
