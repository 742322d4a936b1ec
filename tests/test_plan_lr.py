"""Per-width peak lr in sweep plans (`sweep plan --lr-ref-width`, muP for Adam)."""

from __future__ import annotations

import json

import pytest
from test_wsd_sweep import GRID

from ehrfm.errors import UserError


def test_lr_ref_width_scales_each_runs_lr_as_one_over_width(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep, run_train_config

    train = {"batch_size": 8, "lr": 1e-2}
    one, one_rows, _ = plan_sweep(synth_tokens, out=tmp_path / "one", **{**GRID, "train": train})
    sweep, rows, _ = plan_sweep(synth_tokens, out=tmp_path / "mup", lr_ref_width=32, **{**GRID, "train": train})
    widths = {r["d_model"] for r in rows}
    assert len(widths) >= 2  # the grid really has several widths
    for r in rows:
        cfg = run_train_config(sweep, r, tmp_path / "mup" / "runs" / r["run_id"])
        assert cfg.lr == pytest.approx(1e-2 * 32 / r["d_model"])
    for r in one_rows:
        assert run_train_config(one, r, tmp_path / "one" / "runs" / r["run_id"]).lr == 1e-2
    # The lr is part of a run's identity: only 32-wide runs keep their ids.
    same = {r["run_id"] for r in rows} & {r["run_id"] for r in one_rows}
    assert same == {r["run_id"] for r in rows if r["d_model"] == 32}
    assert json.loads((tmp_path / "mup" / "sweep.json").read_text())["lr_ref_width"] == 32
    # wsd: a trunk and its branches share the shape, so they share the lr.
    wsd, wsd_rows, _ = plan_sweep(synth_tokens, out=tmp_path / "wsd", schedule="wsd", lr_ref_width=32, **{**GRID, "train": train})
    for r in wsd_rows:
        assert run_train_config(wsd, r, tmp_path / "wsd" / "runs" / r["run_id"]).lr == pytest.approx(1e-2 * 32 / r["d_model"])
    with pytest.raises(UserError, match="--lr-ref-width must be >= 0"):
        plan_sweep(synth_tokens, out=tmp_path / "bad", lr_ref_width=-1, **GRID)
    assert not (tmp_path / "bad").exists()
