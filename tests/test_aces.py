"""ACES task configs shipped in ehrfm/clinical/aces/, run by the real `aces-cli` (package es-aces).

es-aces pins polars < 2, which conflicts with ours, so the test builds its own venv once and keeps
it in pytest's cache dir (EHRFM_ACES_VENV may name a ready one). Checks:
- on the real MIMIC-IV demo MEDS, aces-cli labels from the shipped configs match `ehrfm labels`
  within 10% in rows and positives for all four tasks, and an ACES label file runs through
  `ehrfm baseline`;
- an ACES label parquet (aces-cli output, on the synthetic cohort) feeds a model head (probe) and
  the sweep scorer behind `sweep collect --labels` (ehrfm.clinical.utility.score_run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from ehrfm.clinical.aces import TASKS, config_path


@pytest.fixture(scope="session")
def aces_cli(request) -> Path:
    ready = os.environ.get("EHRFM_ACES_VENV")
    venv = Path(ready) if ready else Path(request.config.cache.mkdir("es-aces-venv"))
    cli = venv / "bin" / "aces-cli"
    if not cli.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "es-aces>=0.7,<0.8"], capture_output=True, text=True)
        assert r.returncode == 0 and cli.exists(), "could not build the es-aces venv: " + r.stderr[-2000:]
    return cli


def run_aces(cli: Path, meds_dir: Path, task: str, out: Path) -> Path:
    """aces-cli on a MEDS dataset (its data shards joined into one file, ACES' single_file mode)."""
    joined = out.parent / f"{meds_dir.name}_events.parquet"
    if not joined.exists():
        pl.read_parquet(meds_dir / "data" / "**" / "*.parquet").sort("subject_id", "time").write_parquet(joined)
    target = out / f"{task}.parquet"
    r = subprocess.run([str(cli), f"data.path={joined}", "data.standard=meds", f"cohort_dir={config_path(task).parent}",
                        f"cohort_name={task}", f"output_filepath={target}", f"log_dir={out / 'logs'}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return target


def test_aces_configs_match_ehrfm_labels_on_the_demo(aces_cli, demo_meds, tmp_path):
    from ehrfm.clinical.labels import make_labels

    ours, _ = make_labels(demo_meds, "all")
    (tmp_path / "aces").mkdir()
    for task in TASKS:
        aces = pl.read_parquet(run_aces(aces_cli, demo_meds, task, tmp_path / "aces"))
        mine = ours[task]
        n, n_pos = aces.height, int(aces["boolean_value"].sum())
        m, m_pos = mine.height, int(mine["boolean_value"].sum())
        assert abs(n - m) <= 0.1 * m and abs(n_pos - m_pos) <= 0.1 * m_pos, (task, n, n_pos, m, m_pos)
        if task == "readmission_30d":  # its transfer window excludes what --transfer-hours does (260/53 without it)
            # ACES cannot tie a row to its stay, so it cannot see a history holding rows under a later stay's hadm_id
            # (later_stay_in_history: 1 readmission label on the demo, heparin orders of the next stay inside this one).
            # Without the first rows of stays the labels are ACES's, row for row.
            from ehrfm.clinical.configs import LabelConfig
            from ehrfm.clinical.labels import _stay_events, labels_from_stays, stays_from_events

            by_admissions, _ = labels_from_stays(stays_from_events(_stay_events(demo_meds)[0]),
                                                 LabelConfig(meds_dir=str(demo_meds), task=task))
            assert sorted(aces.select(mine.columns).rows()) == sorted(by_admissions.rows())
            assert set(mine.rows()) < set(by_admissions.rows()) and (n - m, n_pos - m_pos) == (1, 1), (n, n_pos, m, m_pos)
        # the same stays: most (subject, prediction_time) keys are shared and agree on the label
        both = aces.join(mine, on=["subject_id", "prediction_time"], suffix="_ours")
        assert both.height >= 0.9 * m and (both["boolean_value"] == both["boolean_value_ours"]).mean() >= 0.95, task
    out = tmp_path / "baseline"
    r = subprocess.run([sys.executable, "-m", "ehrfm", "baseline", str(demo_meds), "--labels", str(tmp_path / "aces" / "long_los.parquet"),
                        "--out", str(out), "--bootstrap", "0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "long_los" and 0.0 <= m["models"]["logistic_regression"]["auroc"] <= 1.0


def test_aces_labels_feed_heads_and_sweep_scoring(aces_cli, synth_meds, synth_tokens, tiny_run, tmp_path):
    from ehrfm.clinical.probe import ProbeConfig, probe
    from ehrfm.clinical.utility import score_run

    (tmp_path / "aces").mkdir()
    labels = run_aces(aces_cli, synth_meds, "in_hospital_mortality", tmp_path / "aces")
    assert {"integer_value", "float_value", "categorical_value"} <= set(pl.read_parquet(labels).columns)  # ACES' own file
    m = probe(ProbeConfig(str(tiny_run), str(synth_tokens), str(labels), bootstrap=0, max_labels=200), tmp_path / "probe")
    assert m["task"] == "in_hospital_mortality" and 0.0 <= m["auroc"] <= 1.0 and m["n"] > 0
    # the probe's default representation (sweep collect defaults to "last")
    scores = score_run(tiny_run, synth_tokens, {"in_hospital_mortality": labels}, max_labels=200, seed=0, pooling="layers")
    assert scores["auroc/in_hospital_mortality"] == pytest.approx(m["auroc"], abs=1e-12)
