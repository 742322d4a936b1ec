"""Faults of a user trying to break training (round 5): foreign checkpoints, splits with nothing to
predict, exporting a run that never finished its final eval.

- a checkpoint/ copied from another run dir (another shape, or the same shape trained for another
  budget) was loaded blindly: a shape mismatch failed the run with a 20-line "size mismatch"
  RuntimeError recorded as "failed" (and failing again on every retry), a same-shape checkpoint of
  another budget was resumed silently. Now one line naming the checkpoint and the fields, nothing
  written;
- a train split of one-token subjects (no next token anywhere) trained D tokens without a single
  gradient and was recorded "completed"; a tuning split of such subjects trained the whole run, then
  recorded "diverged: val loss became nan" (0/0). Now one line naming the split, before anything is
  written;
- `ehrfm export RUN/checkpoint` of a diverged run exported it without --allow-incomplete (the final
  checkpoint says "completed": it is written before the final eval), and a run stopped during its
  final eval (no result.json) was exported as "completed" although it may have diverged there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENV = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"}


def cli(tok, out, *extra, tokens=3000, d_model=32) -> list[str]:
    return [sys.executable, "-m", "ehrfm", "train", str(tok), "--out", str(out), "--n-layer", "2", "--d-model", str(d_model),
            "--n-head", "2", "--context", "64", "--tokens", str(tokens), "--batch-size", "4", "--lr", "3e-3",
            "--eval-tokens", "2048", "--seed", "3", *extra]


def ehrfm(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ehrfm", *map(str, args)], env=ENV, capture_output=True, text=True)


def digest(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tok, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(cli(tok, out), env=ENV, check=True, capture_output=True)
    return out


@pytest.mark.parametrize("other, message", [
    (dict(d_model=48), "d_model 48 in the checkpoint vs 32 now; mlp_hidden 128 in the checkpoint vs 96 now"),
    (dict(tokens=2000), "tokens 2000 in the checkpoint vs 3000 now; steps 8 in the checkpoint vs 12 now"),
], ids=["another-shape", "another-budget"])
def test_a_checkpoint_of_another_run_is_refused_naming_the_fields(tok, reference, tmp_path, other, message):
    """Before: another shape -> exit 1, result.json "failed" with a multi-line size-mismatch RuntimeError
    (and again on every retry); another budget -> resumed silently from the other run's step 8."""
    donor, run = tmp_path / "donor", tmp_path / "run"
    subprocess.run(cli(tok, donor, **other), env=ENV, check=True, capture_output=True)
    shutil.copytree(reference, run)
    (run / "result.json").unlink()
    shutil.rmtree(run / "checkpoint")
    shutil.copytree(donor / "checkpoint", run / "checkpoint")
    before = digest(run)
    p = subprocess.run(cli(tok, run), env=ENV, capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and f"checkpoint {run / 'checkpoint'} was written by another run ({message})" in err[0]
    assert digest(run) == before  # nothing written, no result.json


def write_split(tok: Path, split: str, seqs: list[np.ndarray]) -> None:
    """Replace `split` of token dir `tok` by the given subject timelines (DESIGN.md section 2)."""
    d = tok / split
    shutil.rmtree(d)
    d.mkdir()
    flat = np.concatenate(seqs).astype(np.uint16)
    np.save(d / "tokens.npy", flat)
    np.save(d / "times.npy", np.arange(len(flat), dtype=np.int64))
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ids = np.arange(1000, 1000 + len(seqs), dtype=np.int64)
    pq.write_table(pa.table({"subject_id": ids, "offset": offsets, "length": lengths}), d / "index.parquet")


@pytest.mark.parametrize("split, extra, message", [
    ("train", (), "split train holds no next token to predict (its 50 subject(s) have at most 1 token each)"),
    ("tuning", (), "split tuning (50 subject(s) of at most 1 token each) hold no next token to predict"),
    ("tuning-first", ("--eval-tokens", "20"), "the first 20 tokens (--eval-tokens) of split tuning hold no next token"),
])
def test_a_split_with_nothing_to_predict_is_refused_before_anything_is_written(tok, tmp_path, split, extra, message):
    """Before: one-token train subjects -> "completed" after 12 steps without a target (val_loss = ln V);
    one-token tuning subjects -> the whole run trained, then "diverged: val loss became nan"."""
    bad = tmp_path / "tok"
    shutil.copytree(tok, bad)
    for stats in bad.rglob("stats.json"):
        stats.unlink()
    ones = [np.array([3 + i % 30]) for i in range(50)]
    if split == "tuning-first":  # single tokens first, then a real timeline past --eval-tokens
        ones = ones[:20] + [np.arange(3, 33)]
    write_split(bad, split.split("-")[0], ones)
    out = tmp_path / "run"
    p = subprocess.run(cli(bad, out, *extra), env=ENV, capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and message in p.stderr, p.stderr
    assert not out.exists()


def test_a_run_without_its_final_eval_is_not_exported_or_loaded_as_completed(reference, tmp_path):
    """Before: `ehrfm export RUN/checkpoint` of a diverged run exited 0 (only a warning after writing),
    and a run with its final checkpoint but no result.json exported as "completed"."""
    from ehrfm.errors import UserError
    from ehrfm.export import load_model

    diverged = tmp_path / "diverged"
    shutil.copytree(reference, diverged)
    result = json.loads((diverged / "result.json").read_text())
    result.update(status="diverged", val_loss=None, error="val loss 9.1 nats/token at step 12 is above uniform guessing")
    (diverged / "result.json").write_text(json.dumps(result))
    p = ehrfm("export", diverged / "checkpoint", "--out", tmp_path / "hf1")
    assert p.returncode == 2 and f"has status 'diverged' ({diverged / 'result.json'})" in p.stderr, p.stderr
    assert not (tmp_path / "hf1").exists()

    unevaluated = tmp_path / "unevaluated"
    shutil.copytree(reference, unevaluated)
    (unevaluated / "result.json").unlink()  # killed during the final eval: the final checkpoint says "completed"
    for where in (unevaluated, unevaluated / "checkpoint"):
        p = ehrfm("export", where, "--out", tmp_path / "hf2")
        assert p.returncode == 2 and "has no result.json: its final held-out loss was never measured" in p.stderr, p.stderr
        with pytest.raises(UserError, match="final held-out loss was never measured"):
            load_model(where)
    assert not (tmp_path / "hf2").exists()
    assert ehrfm("export", unevaluated, "--out", tmp_path / "hf3", "--allow-incomplete").returncode == 0
    assert ehrfm("export", reference / "checkpoint", "--out", tmp_path / "hf4").returncode == 0  # a completed run's


def test_export_never_replaces_the_token_dir_its_run_records(tok, reference, tmp_path):
    """Before: `ehrfm export RUN --out TOK --overwrite` (TOK the token dir in RUN/config.json, not given
    with --tokens) deleted the token dir and put the export in its place (exit 0)."""
    from ehrfm.io import OUTPUT_MARKER

    token_dir = tmp_path / "tok"
    shutil.copytree(tok, token_dir)
    (token_dir / OUTPUT_MARKER).write_text("tokenize\n")  # what `ehrfm tokenize` leaves: an ehrfm output
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    config = json.loads((run / "config.json").read_text())
    config["train"]["tokens_dir"] = str(token_dir)
    (run / "config.json").write_text(json.dumps(config))
    before = digest(token_dir)
    for where, out in [(run, token_dir), (run / "checkpoint", token_dir / "hf")]:
        p = ehrfm("export", where, "--out", out, "--overwrite")
        assert p.returncode == 2 and "writing it would replace the command's own input" in p.stderr, p.stderr
    assert digest(token_dir) == before


def test_a_run_dir_that_lost_its_config_json_says_so(tok, reference, tmp_path):
    """Before: "output RUN exists and is not a run dir (no config.json); choose another --out" for a run dir
    holding its checkpoint, metrics and result; --overwrite retrains it."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "config.json").unlink()
    p = subprocess.run(cli(tok, run), env=ENV, capture_output=True, text=True)
    assert p.returncode == 2
    assert (f"run dir {run} has lost its config.json (checkpoint, metrics.jsonl, result.json remain)" in p.stderr
            and "pass --overwrite to retrain it" in p.stderr), p.stderr
    assert subprocess.run(cli(tok, run, "--overwrite"), env=ENV, capture_output=True).returncode == 0
    assert json.loads((run / "result.json").read_text())["val_loss"] == json.loads((reference / "result.json").read_text())["val_loss"]


def test_a_run_dir_whose_config_json_is_damaged_says_how_to_train_it_again(tok, reference, tmp_path):
    """Before: "run config RUN/config.json is damaged: not valid JSON" and nothing more; a sweep's retry failed the
    same way each time. Now it says how to train it again; --overwrite does."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    text = (run / "config.json").read_text()
    for damaged in (text[: len(text) // 2], "[]"):
        (run / "config.json").write_text(damaged)
        p = subprocess.run(cli(tok, run), env=ENV, capture_output=True, text=True)
        assert p.returncode == 2 and f"run config {run / 'config.json'} is damaged" in p.stderr, p.stderr
        assert (f"pass --overwrite (or remove {run}) to train the run again from the start; in a sweep, remove the run "
                "dir and run `ehrfm sweep launch` again") in p.stderr, p.stderr
    assert subprocess.run(cli(tok, run, "--overwrite"), env=ENV, capture_output=True).returncode == 0
    assert json.loads((run / "result.json").read_text())["val_loss"] == json.loads((reference / "result.json").read_text())["val_loss"]


def test_a_cosine_run_that_would_end_inside_its_warmup_is_refused(tok, tmp_path):
    """Before: --warmup-steps 100 on a 12-step cosine run trained at lr (step+1)/100 x lr throughout, ending at
    0.12 x lr instead of min_lr_ratio x lr, and was recorded "completed"."""
    from test_train import cfg_for

    from ehrfm.errors import UserError
    from ehrfm.train import lr_at, train

    kw = dict(tokens=3000, batch_size=4)  # 12 steps of 4 x 64 tokens
    for warmup, end in [(100, "0.12"), (12, "1")]:
        with pytest.raises(UserError, match=rf"warmup_steps {warmup} leaves no decay in this run of 12 steps .* it would end "
                                            rf"at {end} x lr, not min_lr_ratio x lr; set warmup_steps at most 11"):
            train(cfg_for(tok, tmp_path / f"w{warmup}", warmup_steps=warmup, **kw))
        assert not (tmp_path / f"w{warmup}").exists()
    cfg = cfg_for(tok, tmp_path / "w11", warmup_steps=11, **kw)
    assert lr_at(11, 12, cfg) == pytest.approx(3e-3 * 0.1)  # the longest warmup that still decays: its last step
    assert train(cfg)["status"] == "completed"


@pytest.mark.parametrize("name, message", [("bogus", "unknown logger 'bogus'"), ("wandb", "needs the wandb package")])
def test_a_bad_ehrfm_logger_is_refused_before_the_run_dir_is_written(tok, tmp_path, monkeypatch, name, message):
    """Before: EHRFM_LOGGER=bogus (or wandb, not installed) left RUN holding config.json, then exited 2
    with "--logger wandb needs ..." although no --logger was typed."""
    from test_train import cfg_for

    from ehrfm.errors import UserError
    from ehrfm.train import train

    if name == "wandb":
        monkeypatch.setitem(sys.modules, "wandb", None)  # not installed, whatever this machine has
    monkeypatch.setenv("EHRFM_LOGGER", name)
    with pytest.raises(UserError, match=rf"^environment variable EHRFM_LOGGER='{name}': .*{message}"):
        train(cfg_for(tok, tmp_path / "run", tokens=3000, batch_size=4))
    assert not (tmp_path / "run").exists()
