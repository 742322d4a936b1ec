"""The trainer end to end on real token dirs: exact budget, schedule, files, resume, faults."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ehrfm.config import TrainConfig
from ehrfm.train import lr_at, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_token_dir(path: Path, vocab_size: int = 40, n_subjects=(60, 12, 12), seed: int = 0, max_len: int = 300) -> Path:
    """A real token dir (DESIGN.md section 2) of Markov-chain timelines: learnable, with subjects
    both shorter and longer than a context."""
    rng = np.random.default_rng(seed)
    vocab = ["PAD", "UNK", "TIMELINE_END"] + [f"CODE//{i}" for i in range(vocab_size - 3)]
    trans = rng.dirichlet(np.full(vocab_size - 3, 0.1), size=vocab_size - 3)  # peaked next-code law
    path.mkdir(parents=True)
    (path / "tokenizer.json").write_text(json.dumps({"vocab": vocab, "seed": seed}))
    sid = 0
    for split, n in zip(("train", "tuning", "held_out"), n_subjects, strict=False):
        seqs = []
        for _ in range(n):
            L = int(rng.integers(5, max_len))
            s = [int(rng.integers(vocab_size - 3))]
            for _ in range(L - 2):
                s.append(int(rng.choice(vocab_size - 3, p=trans[s[-1]])))
            seqs.append(np.array([t + 3 for t in s] + [2], dtype=np.uint16))
        d = path / split
        d.mkdir()
        flat = np.concatenate(seqs)
        np.save(d / "tokens.npy", flat)
        np.save(d / "times.npy", np.arange(len(flat), dtype=np.int64))
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        ids = np.arange(sid, sid + n, dtype=np.int64)
        sid += n
        pq.write_table(pa.table({"subject_id": ids, "offset": offsets, "length": lengths}), d / "index.parquet")
    return path


def cfg_for(tok, out, **kw) -> TrainConfig:
    base = dict(tokens_dir=str(tok), out_dir=str(out), n_layer=2, d_model=32, n_head=2, context=64,
                tokens=20_000, batch_size=8, lr=3e-3, eval_tokens=4096, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_trains_exactly_d_tokens_and_learns(tok, tmp_path):
    D = 19_999  # not a multiple of batch_size * context: the last step is partial
    res = train(cfg_for(tok, tmp_path / "run", tokens=D))
    assert res["status"] == "completed"
    assert res["tokens"] == D and res["steps"] == math.ceil(D / (8 * 64))
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert on_disk["val_loss"] == res["val_loss"] and on_disk["flops"] == res["flops_per_token"] * D
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["tokens"] == D and lines[-1]["val_loss"] == res["val_loss"]
    assert [m["step"] for m in lines[:-1]] == list(range(1, res["steps"] + 1))
    # it learned: far below the uniform loss ln(40) = 3.69 and below the first steps' loss
    assert res["val_loss"] < 0.8 * math.log(40) and lines[-2]["train_loss"] < lines[0]["train_loss"] - 0.5
    from ehrfm.tokens import TokenDir

    assert res["eval_tokens"] == min(4096, TokenDir(tok).split("tuning").n_tokens)  # all of a small tuning split
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["vocab_size"] == 40 and config["tokens"] == D
    assert {p.name for p in (tmp_path / "run" / "checkpoint").iterdir()} >= {"model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json", "model_config.json"}


def test_seed_fixes_everything(tok, tmp_path):
    from safetensors.torch import load_file

    kw = dict(tokens=3000, eval_tokens=1024)
    a = train(cfg_for(tok, tmp_path / "a", seed=5, **kw))
    b = train(cfg_for(tok, tmp_path / "b", seed=5, **kw))
    c = train(cfg_for(tok, tmp_path / "c", seed=6, **kw))
    wa, wb, wc = (load_file(str(tmp_path / r / "checkpoint" / "model.safetensors")) for r in "abc")
    assert a["val_loss"] == b["val_loss"] != c["val_loss"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa) and not torch.equal(wa["head.weight"], wc["head.weight"])


def test_flops_budget_sets_tokens(tok, tmp_path):
    from ehrfm.shapes import flops_per_token

    res = train(cfg_for(tok, tmp_path / "run", tokens=None, flops=2e9, eval_tokens=1024))
    assert res["tokens"] == int(2e9 // res["flops_per_token"]) and res["flops"] <= 2e9
    assert res["flops_per_token"] == flops_per_token(cfg_for(tok, "x").model_config(40))


def test_lr_schedule_warmup_then_cosine_to_ten_percent():
    cfg = TrainConfig(tokens_dir="t", out_dir="o", tokens=1, lr=1e-3, warmup_frac=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4)  # min_lr_ratio 0.1
    assert lrs[10] == pytest.approx(1e-3) and all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[54] == pytest.approx(1e-4 + 0.5 * 9e-4, rel=0.02)  # halfway down the cosine


def test_tiny_run_on_real_pipeline_tokens_loads_for_heads(tiny_run, synth_tokens):
    """The shared fixture: synthetic MIMIC -> MEDS -> tokens -> a real trained run; load_model works."""
    from ehrfm.checkpoint import load_model
    from ehrfm.tokens import TokenDir

    res = json.loads((tiny_run / "result.json").read_text())
    td = TokenDir(synth_tokens)
    assert res["status"] == "completed" and res["tokens"] == 60_000 and res["vocab_size"] == td.vocab_size
    assert res["val_loss"] < math.log(td.vocab_size)  # better than uniform
    model, mcfg = load_model(tiny_run)
    assert (mcfg.n_layer, mcfg.d_model, mcfg.context, mcfg.vocab_size) == (2, 32, 128, td.vocab_size)
    tokens, _ = td.split("held_out").subject(0)
    idx = torch.from_numpy(np.asarray(tokens[:50], dtype=np.int64))[None]
    with torch.no_grad():
        h = model.hidden_states(idx)
        logits, _ = model(idx)
    assert h.shape == (1, idx.shape[1], 32) and torch.isfinite(logits).all()


def test_gradient_accumulation_is_the_same_step(tok, tmp_path):
    """micro_batch_size regroups the same loss sum: 8 rows at once == 4 micro-batches of 2 (fp32 rounding)."""
    a = train(cfg_for(tok, tmp_path / "a", tokens=5000, eval_tokens=1024))
    b = train(cfg_for(tok, tmp_path / "b", tokens=5000, eval_tokens=1024, micro_batch_size=2))
    la = [json.loads(line)["train_loss"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line)["train_loss"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert lb == pytest.approx(la, rel=1e-5) and b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
