"""Faults of a user trying to break training (round 4): determinism at the run's end, stale inputs.

- the final checkpoint is written before the final eval, not after it: a run killed during its
  final eval (SLURM's SIGKILL after a SIGTERM's grace) lost every step since its last periodic
  checkpoint (all of them with the default checkpoint_interval 0) and retrained from step 0; a
  stop requested at the last step was ignored (the run went on into the eval). Now the rerun only
  evaluates, bit-identical to the uninterrupted run;
- a stale stats.json (tokens.npy replaced by one of the same length) let a token id >= V into
  training: the run failed mid-way with "IndexError: index out of range in self"; now it is one
  line naming train/tokens.npy, before anything is written;
- dtype "auto" is resolved where a run begins (bf16 on CUDA, fp32 on CPU): a run resumed on another
  kind of device switched precision silently; now it keeps the precision its checkpoint records;
- --tokens 0.5 said "tokens must be >= 1 (got 0)" and --tokens 1000.7 trained 1000 tokens; a
  fraction is refused naming what was typed;
- a wsd run of fewer tokens than its warmup + 1 steps (e.g. less than one batch) was told to
  "lower decay_fraction", which cannot help (the decay is at least one step); it is told the
  token count that works;
- a SIGTERM during a periodic eval trained one more step before its checkpoint; now that step's
  checkpoint, and the resume (with another --eval-interval) is bit-identical;
- --logger wandb: the final val_loss went to a second W&B run of its own;
- export: a run whose token dir moved was told to "run `ehrfm tokenize` first" (now: pass --tokens);
  a vocab repeating a string gave a tokenizer short of ids; the tokenizer's model_max_length was
  2**30, so truncation=True kept timelines longer than the context (now the context, keeping the
  most recent events, as ehrfm's heads do). Exported logits equal ehrfm's for other shapes and
  for packed rows (position_ids per segment and use_cache=False: the export's docstring says so).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from state_edits import write_state
from test_train import cfg_for

import ehrfm.train as T
from ehrfm.errors import UserError
from ehrfm.fault_points import wait_held

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENV = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"}
TOKENS, STEP_TOKENS = 3000, 4 * 64  # 12 steps, the last one partial


def cli(tok, out, *extra) -> list[str]:
    return [sys.executable, "-m", "ehrfm", "train", str(tok), "--out", str(out), "--n-layer", "2", "--d-model", "32",
            "--n-head", "2", "--context", "64", "--tokens", str(TOKENS), "--batch-size", "4", "--lr", "3e-3",
            "--eval-tokens", "2048", "--seed", "3", *extra]


def lines(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(s).items() if k != "tokens_per_s"} for s in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(cli(tok, out), env=ENV, check=True, capture_output=True)
    return out


@pytest.mark.parametrize("point, sig, rc", [("final-eval", signal.SIGKILL, -signal.SIGKILL), ("step-12", signal.SIGTERM, 3)],
                         ids=["killed-during-the-final-eval", "stopped-at-the-last-step"])
def test_a_run_stopped_at_its_end_resumes_with_the_eval_only(tok, reference, tmp_path, point, sig, rc):
    """Before: no checkpoint at the final-eval hold (the rerun trained 12 steps again), and a SIGTERM
    at the last step went on into the eval (exit 0)."""
    steps = json.loads((reference / "result.json").read_text())["steps"]
    assert steps == -(-TOKENS // STEP_TOKENS) == 12
    out, holds = tmp_path / "run", tmp_path / "holds"
    proc = subprocess.Popen(cli(tok, out), env=dict(ENV, EHRFM_HOLD_AT=point, EHRFM_HOLD_DIR=str(holds)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_held(holds, out.name, point, is_alive=lambda: proc.poll() is None)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == rc, err.decode()[-500:]
    assert not (out / "result.json").exists()
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 12  # every step kept
    assert [m["step"] for m in lines(out)] == list(range(1, 13))  # no final-eval line yet

    done = subprocess.run(cli(tok, out), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    res, ref = json.loads((out / "result.json").read_text()), json.loads((reference / "result.json").read_text())
    assert res["status"] == "completed" and res["val_loss"] == ref["val_loss"]
    assert res["session_tokens_per_s"] is None  # the rerun trained no step: it only evaluated
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(str(out / "checkpoint" / name)), load_file(str(reference / "checkpoint" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert lines(out) == lines(reference)
    assert not (out / "checkpoint.prev").exists()


def test_a_stop_during_a_periodic_eval_checkpoints_that_step_and_resumes_with_another_eval_interval(tok, reference, tmp_path):
    """SIGTERM while step 5's eval runs (held at its start). Before: the run trained step 6, then stopped."""
    out, holds = tmp_path / "run", tmp_path / "holds"
    proc = subprocess.Popen(cli(tok, out, "--eval-interval", "5"), env=dict(ENV, EHRFM_HOLD_AT="eval-5", EHRFM_HOLD_DIR=str(holds)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_held(holds, out.name, "eval-5", is_alive=lambda: proc.poll() is None)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err.decode()[-500:]
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 5
    assert "val_loss" in lines(out)[-1] and lines(out)[-1]["step"] == 5  # the eval was finished and logged
    done = subprocess.run(cli(tok, out, "--eval-interval", "3"), env=ENV, capture_output=True, text=True)  # a runtime setting
    assert done.returncode == 0, done.stderr[-500:]
    a, b = load_file(str(out / "checkpoint" / "model.safetensors")), load_file(str(reference / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "result.json").read_text())["val_loss"] == json.loads((reference / "result.json").read_text())["val_loss"]
    assert [m["step"] for m in lines(out) if "val_loss" in m] == [5, 6, 9, 12]  # the periodic evals, then the final one
    same = [{k: v for k, v in m.items() if k != "val_loss"} for m in lines(out)[:-1]]
    assert same == [{k: v for k, v in m.items() if k != "val_loss"} for m in lines(reference)[:-1]]


def test_a_stale_stats_json_cannot_let_an_unknown_token_id_into_training(tok, tmp_path):
    """Before: the run started, then failed at the step that met the id ("IndexError: index out of range in self")."""
    bad = tmp_path / "tok"
    shutil.copytree(tok, bad)
    tokens = np.load(bad / "train" / "tokens.npy")
    tokens[100] = 45  # V = 40
    np.save(bad / "train" / "tokens.npy", tokens)
    # stats.json of the tokens.npy it replaced: the same token counts, a max_token_id inside the vocab
    stats = {"splits": {s: {"tokens": int(len(np.load(bad / s / "tokens.npy"))), "max_token_id": 39}
                        for s in ("train", "tuning", "held_out")}}
    (bad / "stats.json").write_text(json.dumps(stats))
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"train/tokens.npy has 1 token ids >= the vocab size 40 of tokenizer.json"):
        T.train(cfg_for(bad, out, tokens=len(tokens)))  # one epoch: every token, the bad one included
    assert not out.exists()


def test_auto_dtype_resumes_in_the_precision_its_checkpoint_was_trained_in(tok, tmp_path, capsys):
    """A checkpoint of a run begun on a GPU (dtype auto: bf16) resumed on a CPU (auto: fp32).
    Before: the rest of the run was trained in fp32, result.json said float32."""
    out = tmp_path / "run"
    T.request_stop()  # stops after step 1
    assert T.train(cfg_for(tok, out, tokens=2000))["status"] == "interrupted"
    state_path = out / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    assert state["dtype"] == "float32"  # recorded where it was trained
    state["dtype"] = "bfloat16"  # as a CUDA node writes it
    write_state(state_path, state)
    res = T.train(cfg_for(tok, out, tokens=2000))
    assert res["status"] == "completed" and res["dtype"] == "bfloat16"
    assert json.loads(state_path.read_text())["dtype"] == "bfloat16"
    assert "resuming in bfloat16, the precision its checkpoint was trained in" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [
    ("--tokens", "0.5", "argument --tokens: expected a whole number of tokens like 20000 or 2e6 (got '0.5')"),
    ("--tokens", "1000.7", "argument --tokens: expected a whole number of tokens like 20000 or 2e6 (got '1000.7')"),
    ("--stable-checkpoints", "128.5", "--stable-checkpoints: '128.5' is not a token count (a whole number >= 1)"),
])
def test_a_fraction_of_a_token_is_refused_as_typed(tok, tmp_path, flag, value, message):
    """Before: --tokens 0.5 -> "tokens must be >= 1 (got 0)"; --tokens 1000.7 trained 1000 tokens."""
    args = cli(tok, tmp_path / "run", "--schedule", "wsd") + [flag, value]
    p = subprocess.run(args, env=ENV, capture_output=True, text=True)
    assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "run").exists()
    from ehrfm.train_cli import _token_count

    assert _token_count("2e6") == 2_000_000 and _token_count("9007199254740993") == 2**53 + 1  # exact, not via float


def test_a_wsd_run_shorter_than_its_warmup_is_told_a_budget_that_works(tok, tmp_path):
    """100 tokens are one step of 4 x 64: the 1-step warmup and the (at least) 1-step decay cannot both fit.
    Before: "lower decay_fraction", which changes nothing."""
    kw = dict(batch_size=4, schedule="wsd", eval_tokens=512)
    with pytest.raises(UserError) as e:
        T.train(cfg_for(tok, tmp_path / "a", tokens=100, **kw))
    assert "train more than 256 tokens (at least 2 steps of batch_size*context=256 tokens)" in str(e.value)
    assert "decay_fraction," not in str(e.value).split(";")[1]
    assert not (tmp_path / "a").exists()
    res = T.train(cfg_for(tok, tmp_path / "b", tokens=257, **kw))  # the advice, taken
    assert res["status"] == "completed" and res["steps"] == 2


def test_export_of_a_run_whose_token_dir_moved_says_to_pass_tokens(tok, tmp_path):
    """Before: "TOK is not a token dir: tokenizer.json not found (run `ehrfm tokenize` first)"."""
    moved = tmp_path / "tok"
    shutil.copytree(tok, moved)
    run = tmp_path / "run"
    assert T.train(cfg_for(moved, run, tokens=600, eval_tokens=512))["status"] == "completed"
    moved.rename(tmp_path / "tok-elsewhere")
    p = subprocess.run([sys.executable, "-m", "ehrfm", "export", str(run), "--out", str(tmp_path / "hf")], env=ENV,
                       capture_output=True, text=True)
    assert p.returncode == 2 and not (tmp_path / "hf").exists()
    assert p.stderr.strip() == (f"ehrfm export: error: {run}/config.json: field train.tokens_dir {moved} holds no tokenizer.json "
                                "(moved or deleted since training?); pass --tokens TOK, the run's token dir where it is now")
    p = subprocess.run([sys.executable, "-m", "ehrfm", "export", str(run), "--out", str(tmp_path / "hf"), "--tokens",
                        str(tmp_path / "tok-elsewhere")], env=ENV, capture_output=True, text=True)
    assert p.returncode == 0 and (tmp_path / "hf" / "model.safetensors").is_file(), p.stderr


@pytest.mark.parametrize("shape", [dict(d_model=48, n_head=3), dict(d_model=24, n_head=6),
                                   dict(d_model=32, n_head=2, rope_theta=500_000.0, mlp_hidden=40)],
                         ids=["3-heads-of-16", "6-heads-of-4", "rope-theta-5e5-mlp-40"])
def test_exported_llama_gives_ehrfms_logits_on_plain_and_packed_rows(tok, tmp_path, shape):
    """The round trip the export promises, for shapes other than the default: fp32 CPU logits within 1e-5
    (measured: identical or ~1e-7), packed rows included (position_ids per segment, use_cache=False);
    the tokenizer truncates a long timeline to the model's context, keeping its most recent tokens."""
    transformers = pytest.importorskip("transformers")
    import ehrfm
    from ehrfm.export import export_hf
    from ehrfm.model import segment_positions
    from ehrfm.packing import PackedStream
    from ehrfm.tokens import TokenDir

    run = tmp_path / "run"
    assert T.train(cfg_for(tok, run, tokens=1500, eval_tokens=512, **shape))["status"] == "completed"
    export_hf(run, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert hf.config.num_attention_heads == shape["n_head"] and hf.config.head_dim == shape["d_model"] // shape["n_head"]
    ours = ehrfm.load_model(run)
    td = TokenDir(tok)
    rows = PackedStream(td.split("tuning"), 64, shuffle=False).rows(0, 16 * 64)  # real packed rows
    packed_rows = [i for i, s in enumerate(rows.segment_ids) if len(np.unique(s)) > 1]  # those of 2+ subjects
    assert len(packed_rows) >= 2
    ids, seg = torch.from_numpy(rows.tokens[packed_rows]), torch.from_numpy(rows.segment_ids[packed_rows])
    with torch.no_grad():
        plain, packed = ours(ids), ours.gpt(ids, segment_ids=seg)[0]
        assert (plain - hf(ids).logits).abs().max().item() < 1e-5
        assert (packed - hf(ids, position_ids=segment_positions(seg), use_cache=False).logits).abs().max().item() < 1e-5
        assert (packed - plain).abs().max().item() > 1e-2  # packing matters: the check can fail
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    row = ids[0].tolist()
    assert tokenizer(" ".join(td.decode(row)), add_special_tokens=False)["input_ids"] == row
    assert tokenizer.decode(row) == " ".join(td.decode(row))
    # a timeline longer than the context is cut as ehrfm's heads cut it: its last 64 tokens (before: all 300)
    timeline = np.asarray(td.split("tuning").subject(int(np.argmax(td.split("tuning").lengths)))[0], dtype=np.int64)
    assert len(timeline) > 64
    text = " ".join(td.decode(timeline))
    assert tokenizer(text, truncation=True)["input_ids"] == timeline[-64:].tolist()


def test_the_final_val_loss_is_logged_to_the_runs_own_wandb_run(tok, tmp_path, monkeypatch):
    """--logger wandb (offline): before, _finish opened a second metrics log for the final line, i.e. a
    second W&B run holding only the final val_loss. A stand-in `wandb` module records the calls."""
    import types

    class FakeRun:
        def __init__(self, **kw):
            self.kw, self.logged, self.finished = kw, [], False

        def log(self, scalars, step):
            self.logged.append((step, scalars))

        def finish(self):
            self.finished = True

    runs: list[FakeRun] = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: runs.append(FakeRun(**kw)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    res = T.train(cfg_for(tok, tmp_path / "run", tokens=2000, extra={"logger": "wandb"}))
    assert res["status"] == "completed"
    assert len(runs) == 1 and runs[0].finished and runs[0].kw["mode"] == "offline"
    steps = [step for step, _ in runs[0].logged]
    assert steps == list(range(1, res["steps"] + 1)) + [res["steps"]]  # every step, then the final eval
    assert runs[0].logged[-1][1]["val_loss"] == res["val_loss"]


def test_export_refuses_a_vocab_that_repeats_a_token_string(tok, tmp_path):
    """Before: exported; the tokenizer held 39 of the 40 ids (id 9 decoded to None), config.json said 40."""
    from ehrfm.export import export_hf

    dup = tmp_path / "tok"
    shutil.copytree(tok, dup)
    spec = json.loads((dup / "tokenizer.json").read_text())
    spec["vocab"][10] = spec["vocab"][9]
    (dup / "tokenizer.json").write_text(json.dumps(spec))
    run = tmp_path / "run"
    assert T.train(cfg_for(dup, run, tokens=600, eval_tokens=512))["status"] == "completed"
    with pytest.raises(UserError, match=rf"tokenizer.json: field vocab repeats '{spec['vocab'][9]}' \(ids 9 and 10\)"):
        export_hf(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
