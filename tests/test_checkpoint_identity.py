"""A finished run's checkpoint swapped for another run's of the same shape and length (2026-12-08).

Before: `ehrfm export`, the clinical heads and `ehrfm.load_model(run_dir)` compared a run's checkpoint
with its result.json only by shape, step, tokens and tokenizer: a checkpoint copied in from a run that
differed only in its seed (or lr) was exported and scored as this run's model, though `ehrfm train`
refused the same swap on resume ("written by another run (seed 1 in the checkpoint vs 0 now)"). Now
every consumer compares the train settings the checkpoint records with the run's config.json (the
resume check's comparison, config.checkpoint_setting_differences) and refuses with one line naming
the checkpoint file and each differing setting.
"""

from __future__ import annotations

import json
import shutil

import pytest
from test_train import cfg_for

from ehrfm.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(n_layer=1, d_model=32, n_head=2, context=64, tokens=4096, batch_size=8, eval_tokens=2048)


@pytest.fixture(scope="module")
def runs(tok, tmp_path_factory) -> dict:
    """Two tiny real runs that differ only in their seed."""
    from ehrfm.train import train

    base = tmp_path_factory.mktemp("runs")
    out = {}
    for seed in (0, 1):
        out[seed] = base / f"seed{seed}"
        assert train(cfg_for(tok, out[seed], seed=seed, **TINY))["status"] == "completed"
    return out


def _swapped(runs, tmp_path):
    """Run seed0's dir with seed1's checkpoint copied in (`cp -a runA c9; rm -rf c9/checkpoint; cp -a runS1/checkpoint c9/`)."""
    c9 = tmp_path / "c9"
    shutil.copytree(runs[0], c9)
    shutil.rmtree(c9 / "checkpoint")
    shutil.copytree(runs[1] / "checkpoint", c9 / "checkpoint")
    return c9


def _cli(capsys, *argv) -> tuple[int, str]:
    from ehrfm.app.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def test_a_checkpoint_of_another_seed_is_refused_by_export_heads_and_load_model(runs, tok, tmp_path, capsys):
    import ehrfm
    from ehrfm.clinical.model_io import load_run
    from ehrfm.tokens import TokenDir

    c9 = _swapped(runs, tmp_path)
    state = c9 / "checkpoint" / "state.json"
    assert json.loads(state.read_text())["train"]["seed"] == 1
    assert json.loads((c9 / "config.json").read_text())["train"]["seed"] == 0
    said = "seed 1 in the checkpoint vs 0 in config.json"
    for extra in ((), ("--allow-incomplete",)):
        rc, err = _cli(capsys, "export", c9, "--out", tmp_path / "hf_c9", *extra)
        assert rc == 2 and err.count("\n") == 1, err
        assert str(state) in err and said in err and "--overwrite" in err, err
        assert "lr" not in err.split("(", 1)[1].split(")")[0]  # only what differs
    assert not (tmp_path / "hf_c9").exists()
    for load in (lambda: ehrfm.load_model(c9), lambda: ehrfm.load_model(c9 / "checkpoint"),
                 lambda: load_run(c9, TokenDir(tok)), lambda: load_run(c9, TokenDir(tok), allow_incomplete=True)):
        with pytest.raises(UserError) as e:
            load()
        assert "\n" not in str(e.value) and str(state) in str(e.value) and said in str(e.value)
    # the untouched runs still export and load
    for seed in (0, 1):
        rc, err = _cli(capsys, "export", runs[seed], "--out", tmp_path / f"hf{seed}")
        assert rc == 0, err
        ehrfm.load_model(runs[seed])


def test_an_interrupted_run_with_another_runs_checkpoint_is_refused_even_when_allowed(runs, tmp_path):
    """--allow-incomplete takes a run's own last checkpoint, never another run's: the settings are compared
    against config.json whatever the status; a field the checkpoint lacks (an older ehrfm) is no difference."""
    from ehrfm.checkpoint import load_model, save_checkpoint
    from ehrfm.export import load_model as load_run_model

    c9 = _swapped(runs, tmp_path)
    (c9 / "result.json").unlink()
    model, _ = load_model(c9)
    state = json.loads((c9 / "checkpoint" / "state.json").read_text())
    state.pop("state_sha256", None)
    state.pop("files", None)
    save_checkpoint(c9, model, None, {**state, "status": "interrupted"})
    with pytest.raises(UserError, match=r"seed 1 in the checkpoint vs 0 in config\.json"):
        load_run_model(c9, allow_incomplete=True)
    # an older checkpoint without the seed (or without "train" at all): unknown, so it passes
    for train in ({k: v for k, v in state["train"].items() if k != "seed"}, None):
        save_checkpoint(c9, model, None, {**{k: v for k, v in state.items() if k != "train"}, "status": "interrupted",
                                          **({"train": train} if train is not None else {})})
        load_run_model(c9, allow_incomplete=True)
