"""Faults of a user trying to break training (round 3).

- a tiny run (one step, or a tiny lr) whose held-out loss ends at uniform guessing (ln V) within
  the eval sample's noise is completed, not diverged: a finite blow-up must clear its bound (ln V
  or the initial loss) by more than DIVERGENCE_Z standard errors (the eval's, eval_loss_se, and
  for the initial loss also the first batch's, initial_train_loss_se); an initial loss of a
  one-subject first batch has no SE and bounds nothing;
- a run resumed (or a finished one reused) on a token dir re-tokenized in place -- same
  tokenizer, same subject and token counts, other content -- is refused naming the split whose
  content changed, nothing touched; before, it resumed silently on other data;
- a run dir written by an older ehrfm (a config field it did not have) is still reused when
  the field is at its default; one from a newer ehrfm (a field unknown here) is refused naming
  the field and both versions; every refused field is named with both values;
- a checkpoint written by a newer ehrfm (state.json format above this one's) is refused for
  resuming, loading and export, naming the file and both formats, and never discarded as
  damaged (before: loaded as if it were this ehrfm's);
- a wsd run whose decay would start inside its warmup (decay_fraction 1 with the default
  warmup) is refused naming both settings; before, the warmup was silently dropped (the run
  started at the peak lr, bit-identical to warmup_steps 0);
- settings out of range (seed, intervals, eval batch size, rope_theta) are usage errors before
  anything is written, never a run recorded failed or diverged;
- an --allow-incomplete export says in the export itself (config.json "ehrfm": status, step of
  steps) and on stderr that the run did not complete; before, nothing in the export told it
  from a completed run's.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from state_edits import write_state
from test_train import cfg_for

import ehrfm.train as T
from ehrfm import __version__
from ehrfm.errors import UserError
from ehrfm.train import divergence_reason, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_divergence_margin_is_the_eval_standard_error():
    ln40 = math.log(40)
    # 0.0044 above ln V with an eval SE of 0.003: within 3 SE, noise (and the init's own excess)
    assert divergence_reason(8, vocab_size=40, initial_loss=3.6919, val_loss_se=0.003, val_loss=3.6932) is None
    # the same excess with no SE (fewer than 2 eval subjects): within 5% of the bounds, not a blow-up
    # (before: strict bounds, and a healthy tiny run 0.024 nats above ln V on one eval patient was "diverged")
    assert divergence_reason(8, vocab_size=40, initial_loss=3.6919, val_loss=3.6932) is None
    assert divergence_reason(8, vocab_size=40, initial_loss=3.6919, val_loss=3.8) is None
    assert divergence_reason(8, vocab_size=40, initial_loss=3.6919, val_loss=3.9) == (
        f"val loss 3.9 nats/token at step 8 is above uniform guessing ln V = {ln40:.4g} (V = 40) and above the initial "
        "loss 3.692 (by more than 5%: its eval has no standard error, fewer than 2 subjects)")
    # 10 SE above both: diverged, the margins named (ln V: the eval's SE; the initial loss: both samples')
    assert divergence_reason(8, vocab_size=40, initial_loss=3.6919, val_loss_se=0.003, initial_loss_se=0.004, val_loss=3.722) == (
        f"val loss 3.722 nats/token at step 8 is above uniform guessing ln V = {ln40:.4g} (V = 40) and above the "
        "initial loss 3.692 (by more than 3 standard errors, 3 x 0.003 and 0.005)")
    # above the initial loss (a strong prior at init) by more than the margin, below ln V: diverged
    assert divergence_reason(9, vocab_size=40, initial_loss=3.0, val_loss_se=0.006, initial_loss_se=0.008, val_loss=3.05).endswith(
        "above the initial loss 3 (by more than 3 standard errors, 3 x 0.01)")
    # 3 x hypot(0.006, 0.008) = 0.03: 0.029 above the initial loss is within the two samples' noise
    assert divergence_reason(9, vocab_size=40, initial_loss=3.0, val_loss_se=0.006, initial_loss_se=0.008, val_loss=3.029) is None
    assert divergence_reason(9, vocab_size=40, initial_loss=3.0, val_loss_se=0.006, val_loss=3.019) is not None
    from ehrfm.results import DIVERGENCE_Z

    assert DIVERGENCE_Z == 3.0


@pytest.mark.parametrize("kw", [dict(tokens=512, lr=1e-5), dict(tokens=4000, lr=1e-6), dict(tokens=2)],
                         ids=["one-step", "tiny-lr", "one-token-first-batch"])
def test_tiny_run_at_uniform_guessing_is_completed_not_diverged(tok, tmp_path, kw):
    """Measured before the fix: val 3.6932 and 3.6934 > ln 40 = 3.6889 by 0.0044 -> "diverged"; with
    tokens=2 the initial loss was one token's, 3.654, and val 3.688 was "above the initial loss"."""
    res = train(cfg_for(tok, tmp_path / "run", **kw))
    assert res["status"] == "completed", res.get("error")
    assert res["eval_subjects"] == 12 and 0.001 < res["eval_loss_se"] < 0.01
    assert abs(res["val_loss"] - math.log(40)) < 3 * res["eval_loss_se"]  # at ln V within the eval's noise
    if kw["tokens"] == 2:  # one subject in the first batch: the initial loss has no SE and bounds nothing
        assert res["initial_train_loss_se"] is None and res["val_loss"] > res["initial_train_loss"] + 0.03
    else:
        assert res["val_loss"] > math.log(40) and 0.001 < res["initial_train_loss_se"] < 0.01
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "completed"


def dir_digest(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".train.lock"}


@pytest.mark.parametrize("split", ["train", "tuning"])
def test_resume_on_a_retokenized_token_dir_is_refused(tok, tmp_path, split):
    data = tmp_path / "tok"
    shutil.copytree(tok, data)
    out = tmp_path / "run"
    T.request_stop()  # interrupted after its first step: a checkpoint to resume from
    assert train(cfg_for(data, out, tokens=4000))["status"] == "interrupted"
    before = dir_digest(out)
    # re-tokenized in place: same tokenizer.json, same subjects and token counts, other timelines
    tokens = np.load(data / split / "tokens.npy")
    np.save(data / split / "tokens.npy", np.roll(tokens, 7))
    with pytest.raises(UserError, match=rf"token data differs in {split} content \({split}/tokens.npy and index.parquet: sha256"):
        train(cfg_for(data, out, tokens=4000))
    assert dir_digest(out) == before  # nothing touched
    np.save(data / split / "tokens.npy", tokens)  # the same data again: it resumes and completes
    assert train(cfg_for(data, out, tokens=4000))["status"] == "completed"
    with pytest.raises(UserError, match=f"{split} content"):  # a finished run is not reused on other data either
        np.save(data / split / "tokens.npy", np.roll(tokens, 7))
        train(cfg_for(data, out, tokens=4000))


def test_run_dirs_of_older_and_newer_ehrfm(tok, tmp_path):
    out = tmp_path / "run"
    res = train(cfg_for(tok, out, tokens=1024))
    assert res["status"] == "completed"
    path = out / "config.json"
    saved = json.loads(path.read_text())
    # an older ehrfm: no rope_theta / mlp_hidden-free fields and no content digests yet
    old = json.loads(json.dumps(saved))
    old["ehrfm_version"] = "0.0.1"
    del old["train"]["rope_theta"], old["model"]["rope_theta"], old["model"]["init_std"]
    del old["data"]["train_sha256"], old["data"]["tuning_sha256"]
    path.write_text(json.dumps(old))
    assert train(cfg_for(tok, out, tokens=1024)) == res  # reused, not refused, not retrained
    # the same older run dir asked for a non-default value of the field it lacked: refused, named
    with pytest.raises(UserError, match=r"model config differs in rope_theta 'absent' in the run dir vs 500.0 now.*"
                                        rf"made by ehrfm 0.0.1, this is {__version__}"):
        train(cfg_for(tok, out, tokens=1024, rope_theta=500.0))
    # a newer ehrfm: a train field this one does not know
    new = json.loads(json.dumps(saved))
    new["ehrfm_version"] = "99.0"
    new["train"]["label_smoothing"] = 0.1
    path.write_text(json.dumps(new))
    with pytest.raises(UserError, match=rf"train config differs in label_smoothing \(unknown to ehrfm {__version__}: 0.1\)"):
        train(cfg_for(tok, out, tokens=1024))


def test_checkpoint_of_a_newer_ehrfm_is_refused_never_discarded(tok, tmp_path):
    from ehrfm.checkpoint import FORMAT_VERSION
    from ehrfm.export import export_hf, load_model

    out = tmp_path / "run"
    T.request_stop()
    assert train(cfg_for(tok, out, tokens=4000))["status"] == "interrupted"
    state_path = out / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    state["format"] = FORMAT_VERSION + 1
    write_state(state_path, state)
    before = dir_digest(out)
    message = rf"checkpoint state {state_path} has format {FORMAT_VERSION + 1}, written by a newer ehrfm .* up to {FORMAT_VERSION}"
    with pytest.raises(UserError, match=message):
        train(cfg_for(tok, out, tokens=4000))
    with pytest.raises(UserError, match=message):
        load_model(out, allow_incomplete=True)
    with pytest.raises(UserError, match=message):
        export_hf(out, tmp_path / "hf", allow_incomplete=True)
    assert dir_digest(out) == before and not (tmp_path / "hf").exists()


def test_wsd_decay_inside_the_warmup_is_refused(tok, tmp_path):
    wsd = dict(tokens=20 * 512, schedule="wsd")
    with pytest.raises(UserError, match=r"wsd decay_fraction 1 starts the decay at step 0 of 20, inside the 1-step warmup "
                                        r"\(warmup_frac 0.05\); lower decay_fraction, or set warmup_steps 0"):
        train(cfg_for(tok, tmp_path / "a", decay_fraction=1.0, **wsd))
    with pytest.raises(UserError, match=r"decay_fraction 0.8 starts the decay at step 4 of 20, inside the 6-step warmup \(warmup_steps 6\)"):
        train(cfg_for(tok, tmp_path / "b", decay_fraction=0.8, warmup_steps=6, **wsd))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # a decay from the first step, asked for explicitly; and a decay that starts as the warmup ends
    assert train(cfg_for(tok, tmp_path / "c", decay_fraction=1.0, warmup_steps=0, **wsd))["status"] == "completed"
    assert T.lr_at(0, 20, cfg_for(tok, tmp_path / "c", decay_fraction=1.0, warmup_steps=0, **wsd)) == pytest.approx(3e-3 * (1 - 0.9 / 20))
    assert train(cfg_for(tok, tmp_path / "d", decay_fraction=0.7, warmup_steps=6, **wsd))["status"] == "completed"


@pytest.mark.parametrize("option, value, message", [
    ("seed", -1, "seed must be an integer in 0..2**63-1 (got -1)"),
    ("seed", 2**64, "seed must be an integer in 0..2**63-1"),
    ("seed", 1.5, "seed must be an integer in 0..2**63-1 (got 1.5)"),
    ("eval_batch_size", -2, "eval_batch_size must be >= 0 (got -2)"),
    ("eval_interval", -3, "eval_interval must be >= 0 (got -3)"),
    ("checkpoint_interval", -2, "checkpoint_interval must be >= 0 (got -2)"),
    ("rope_theta", 0.0, "rope_theta must be finite and > 0 (got 0)"),
    ("rope_theta", -1.0, "rope_theta must be finite and > 0 (got -1)"),
])
def test_out_of_range_settings_are_usage_errors_not_failed_or_diverged_runs(tok, tmp_path, option, value, message):
    """Before: seed -1 / 2**64 trained and were recorded failed (ValueError from numpy / torch),
    eval_batch_size -2 scored nothing and was recorded diverged ("val loss became nan"), rope_theta
    0 or -1 diverged at step 1 (NaN), negative intervals were taken silently."""
    out = tmp_path / "run"
    with pytest.raises(UserError, match=f"^train config: {message}".replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        train(cfg_for(tok, out, tokens=1024, **{option: value}))
    assert not out.exists()


def test_integral_seeds_of_other_types_are_accepted(tok):
    assert cfg_for(tok, "run", seed=np.int64(7)).seed == 7 and type(cfg_for(tok, "run", seed=np.int64(7)).seed) is int
    assert cfg_for(tok, "run", seed=3.0).seed == 3  # from a JSON or YAML file


def test_export_records_the_run_it_came_from(tok, tmp_path):
    import os
    import subprocess
    import sys

    from ehrfm.export import export_hf

    run = tmp_path / "run"
    T.request_stop()
    assert train(cfg_for(tok, run, tokens=4000))["status"] == "interrupted"  # after step 1 of 8
    export_hf(run, tmp_path / "hf", allow_incomplete=True)
    made = json.loads((tmp_path / "hf" / "config.json").read_text())["ehrfm"]
    assert (made["status"], made["step"], made["steps"], made["tokens_seen"]) == ("interrupted", 1, 8, 512)
    assert made["run"] == str(run.resolve()) and made["tokenizer_fingerprint"] == T.TokenDir(tok).fingerprint
    cli = subprocess.run([sys.executable, "-m", "ehrfm", "export", str(run), "--out", str(tmp_path / "hf2"), "--allow-incomplete"],
                         capture_output=True, text=True, env={**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"})
    assert cli.returncode == 0, cli.stderr
    assert f"ehrfm export: warning: {run} did not complete (status interrupted, step 1 of 8)" in cli.stderr
    assert train(cfg_for(tok, run, tokens=4000))["status"] == "completed"  # resumed to the end
    export_hf(run, tmp_path / "hf3")
    made = json.loads((tmp_path / "hf3" / "config.json").read_text())["ehrfm"]
    assert (made["status"], made["step"], made["steps"], made["tokens_seen"]) == ("completed", 8, 8, 4000)


@pytest.mark.parametrize("vocab", [[], ["TIMELINE_END"]], ids=["empty", "one-token"])
def test_vocab_of_fewer_than_two_tokens_is_refused(tok, tmp_path, vocab):
    """Before: a one-token vocab trained and was recorded completed with val_loss 0.0 (which sweep
    collect then calls damaged); an empty one said "model config: vocab_size must be >= 1"."""
    data = tmp_path / "tok"
    shutil.copytree(tok, data)
    (data / "tokenizer.json").write_text(json.dumps({"vocab": vocab}))
    for split in ("train", "tuning"):
        tokens = np.load(data / split / "tokens.npy")
        np.save(data / split / "tokens.npy", np.zeros_like(tokens))
    out = tmp_path / "run"
    with pytest.raises(UserError, match=rf"^{data / 'tokenizer.json'}: field vocab has {len(vocab)} token\(s\); a model needs at least 2"):
        train(cfg_for(data, out, tokens=1024))
    assert not out.exists()


def test_a_context_whose_attention_mask_cannot_fit_in_memory_is_refused_before_anything_is_written(synth_tokens, tmp_path,
                                                                                                     monkeypatch):
    """Before: `ehrfm train --context 150000` on a 23 GB machine was killed by the kernel while it built the
    packed rows' (B, 1, T, T) attention mask (67 GB): exit 137, no result.json, config.json left behind, nothing
    said. Now refused in one line, before the run dir is made, with the memory it needs and has."""
    import ehrfm.train as train_mod
    from ehrfm.config import TrainConfig
    from ehrfm.errors import UserError

    cfg = dict(tokens_dir=str(synth_tokens), n_layer=1, d_model=16, n_head=2, context=1024, tokens=2048, batch_size=2,
               micro_batch_size=1, eval_tokens=1024, seed=0)
    monkeypatch.setattr(train_mod, "free_memory", lambda device: 2**21)  # 2 MiB: 3 MiB needed ((2 * 1 + 1) x 1024^2)
    with pytest.raises(UserError, match=r"--context 1,024: packed rows attend through a boolean mask of 1 x 1,024\^2 that "
                                        r"takes 3 MiB to build, above this machine's 2 MiB of available memory"):
        train_mod.train(TrainConfig(out_dir=str(tmp_path / "big"), **cfg))
    assert not (tmp_path / "big").exists()
    monkeypatch.setattr(train_mod, "free_memory", lambda device: 2**22)  # 4 MiB: it fits, and trains (1 step)
    assert train_mod.train(TrainConfig(out_dir=str(tmp_path / "fits"), **cfg))["steps"] == 1
