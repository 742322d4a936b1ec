"""DDP: `ehrfm train` under torchrun with 2 gloo CPU processes equals 1 process, same global batch.

Tolerance: the two runs compute the same sums grouped differently (each rank sums its rows,
gloo adds the two halves), so fp32 rounding differs at ~1e-7 relative per step; over the 30
steps here we require train losses and val_loss within 1e-5 relative and weights within 1e-5.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import make_token_dir

ENV = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"}


def args(tok, out):
    return ["train", str(tok), "--out", str(out), "--n-layer", "2", "--d-model", "32", "--n-head", "2",
            "--context", "64", "--tokens", "7000", "--batch-size", "4", "--micro-batch-size", "1",
            "--lr", "3e-3", "--eval-tokens", "3000", "--seed", "2"]


def losses(run: Path):
    return [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _root_cause(stderr: str) -> str:
    """What a failed torchrun says about why: its ranks' own error lines, then its summary's tail.

    torchrun's summary alone ends the output ("rank 1 ... SIGABRT"), and its last 1,500 characters hid the
    rank's own message (a gloo error, a traceback) once, in one of two CIs run side by side (2026-12-06).
    """
    cues = ("Error", "error:", "terminate called", "what()", "Traceback", "gloo", "Connection")
    lines = list(dict.fromkeys(ln for ln in stderr.splitlines() if any(c in ln for c in cues)))
    return "\n".join(lines[:40]) + "\n---\n" + stderr[-1500:]


def test_two_gloo_ranks_match_one_process(tmp_path):
    tok = make_token_dir(tmp_path / "tok")
    one = subprocess.run([sys.executable, "-m", "ehrfm", *args(tok, tmp_path / "one")], env=ENV, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-800:]
    two = subprocess.run(
        # --standalone: the rendezvous binds a free port itself (port 0); a port picked here and
        # closed before torchrun bound it could be taken by another process in between
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
         "-m", "ehrfm", *args(tok, tmp_path / "two")],
        env=ENV, capture_output=True, text=True, timeout=600,  # a hang guard only: ~1 min on 2 busy cores
    )
    assert two.returncode == 0, _root_cause(two.stderr)
    r1 = json.loads((tmp_path / "one" / "result.json").read_text())
    r2 = json.loads((tmp_path / "two" / "result.json").read_text())
    assert r1["world_size"] == 1 and r2["world_size"] == 2
    assert r2["steps"] == r1["steps"] == 28 and r2["tokens"] == r1["tokens"] == 7000  # last step is partial
    assert r2["val_loss"] == pytest.approx(r1["val_loss"], rel=1e-5)
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    w1 = load_file(str(tmp_path / "one" / "checkpoint" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "checkpoint" / "model.safetensors"))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=0)
    assert r1["val_loss"] < 3.3  # it trained (uniform is ln 40 = 3.69)
    print("ddp val_loss rel diff", abs(r2["val_loss"] / r1["val_loss"] - 1))
