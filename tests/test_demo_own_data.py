"""`ehrfm demo --raw RAW` / `--meds MEDS`: the whole study in one command on your own data.

The end-to-end test runs the real MIMIC-IV demo (100 patients) from its raw CSVs to fits, heads and
report.md, with budgets small enough for seconds of training: the point is that every stage runs on
real data in place, not that 100 patients give a law (the report says they do not).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from ehrfm.app.demo import DemoConfig, _data_commands

# Budgets far below the synthetic demo's: 6 runs of seconds each; no first stage, no bracketing.
TINY = ["--quick", "--budgets", "2e10,4e10", "--sizes", "3", "--first-stage", "0", "--bracket", "0", "--bootstrap", "0"]


def ehrfm(*args, timeout=3000) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ehrfm", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr[-1500:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_one_command_from_raw_mimic_to_fits_heads_and_report(mimic_demo_dir, tmp_path):
    out = tmp_path / "study"
    p = ehrfm("demo", "--raw", mimic_demo_dir, "--out", out, *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    cfg = json.loads((out / "demo_config.json").read_text())
    # The raw data are read in place, never copied; the demo records them by absolute path, and no synthetic cohort.
    assert cfg["raw"] == str(Path(mimic_demo_dir).resolve()) and cfg["meds"] is None and cfg["patients"] is None
    assert not (out / "raw").exists() and (out / "meds" / "metadata" / "dataset.json").is_file()
    # Every stage ran on the real data: MIMIC-IV's own 100 subjects, its labels (as README's audit figures), the sweep.
    stats = json.loads((out / "tokens" / "stats.json").read_text())
    assert sum(s["subjects"] for s in stats["splits"].values()) == 100
    assert json.loads((out / "labels" / "readmission_30d.json").read_text())["n"] == 257
    assert json.loads((out / "audit.json").read_text())  # the leakage audit of those labels
    res = pl.read_parquet(out / "sweep" / "results.parquet")
    assert res.height >= 4 and set(res["status"]) == {"completed"} and (res["epochs"] < 1).all()
    for task in ("in_hospital_mortality", "long_los", "icu_admission", "readmission_30d"):
        assert (out / "heads" / task / "baseline" / "metrics.json").is_file()
    report = (out / "report.md").read_text()
    assert f"by `ehrfm demo --quick --raw {cfg['raw']}`" in report
    assert f"Raw MIMIC-IV from `{cfg['raw']}` -> MEDS" in report and "Synthetic" not in report
    assert f"ehrfm etl {cfg['raw']} --out meds" in report and "ehrfm synth" not in report
    assert "or use more patients" not in report  # no synthetic cohort to grow

    # Resuming that study on other data would mix two studies: refused before any work, naming both changes.
    line = one_line_error(ehrfm("demo", "--meds", out / "meds", "--out", out, *TINY))
    assert "holds a demo made with other settings" in line and "meds None -> " in line and "raw " in line, line


def test_own_data_flags_are_refused_in_one_line_before_any_stage(tmp_path):
    raw = tmp_path / "mimic"
    (raw / "hosp").mkdir(parents=True)
    # --patients sizes the synthetic cohort only.
    line = one_line_error(ehrfm("demo", "--raw", raw, "--patients", "500", "--out", tmp_path / "o1"))
    assert line == ("ehrfm demo: error: --patients 500: sizes the synthetic cohort; with --raw the study uses that data's "
                    "own patients"), line
    # A directory that is not there.
    line = one_line_error(ehrfm("demo", "--meds", tmp_path / "nowhere", "--out", tmp_path / "o2"))
    assert line == f"ehrfm demo: error: --meds {str(tmp_path / 'nowhere')!r}: must be an existing directory", line
    # An --out inside the data: a later --overwrite would delete the user's own files.
    line = one_line_error(ehrfm("demo", "--raw", raw, "--out", raw / "demo_out"))
    assert "lies inside the input" in line and str(raw) in line, line
    assert sorted(x.name for x in raw.iterdir()) == ["hosp"]  # nothing written there
    # Both sources at once.
    p = ehrfm("demo", "--raw", raw, "--meds", raw, "--out", tmp_path / "o3")
    assert p.returncode == 2 and "not allowed with argument" in p.stderr
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_own_meds_is_tokenized_where_it_is(tmp_path):
    meds = tmp_path / "my_meds"
    meds.mkdir()
    cfg, _ = DemoConfig(meds=str(meds), out=str(tmp_path / "o")).checked()
    assert cfg.meds == str(meds.resolve()) and cfg.patients is None and cfg.own_data == f"--meds {meds.resolve()}"
    assert _data_commands(cfg) == [f"ehrfm tokenize {meds.resolve()} --out tokens"]
    synthetic, _ = DemoConfig(out=str(tmp_path / "o")).checked()
    assert synthetic.own_data is None and _data_commands(synthetic)[0] == "ehrfm synth --out raw --patients 44000 --seed 0"


def test_a_demo_dir_from_before_these_settings_resumes_without_changes():
    """A demo_config.json written before --raw/--meds/--gpus-per-node/--time existed held their
    defaults: resuming it with the defaults changes nothing; another value is named."""
    import dataclasses

    from ehrfm.app.demo import _config_changes

    new = json.loads(json.dumps(dataclasses.asdict(DemoConfig())))
    old = {k: v for k, v in new.items() if k not in ("raw", "meds", "gpus_per_node", "slurm_time")}
    assert _config_changes(old, new) == ([], [])
    hard, soft = _config_changes(old, {**new, "meds": "/data/meds", "gpus_per_node": 1})
    assert hard == ["meds None -> /data/meds"] and soft == ["gpus_per_node 0 -> 1"]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_own_meds_without_hospital_stays_gives_the_scaling_study_without_heads(demo_meds, tmp_path):
    """Any MEDS dataset, not only MIMIC-IV's: one without hospital admissions has no clinical labels,
    and the demo says so and still runs the sweep and the fit (before: the labels stage ended it)."""
    import shutil

    meds = tmp_path / "no_stays"
    shutil.copytree(demo_meds, meds)
    dropped = 0
    for shard in (meds / "data").rglob("*.parquet"):
        frame = pl.read_parquet(shard)
        kept = frame.filter(~pl.col("code").str.starts_with("HOSPITAL_ADMISSION//"))
        dropped += frame.height - kept.height
        kept.write_parquet(shard)
    assert dropped > 200  # every admission of the 100 patients
    out = tmp_path / "study"
    p = ehrfm("demo", "--meds", meds, "--out", out, *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    warned = [ln for ln in p.stderr.splitlines() if ln.startswith("ehrfm demo: warning: no clinical labels (")]
    assert len(warned) == 1 and "no hospital stays" in warned[0], p.stderr[-2000:]
    assert not (out / "meds").exists() and not (out / "labels").exists() and not (out / "heads").exists()
    res = pl.read_parquet(out / "sweep" / "results.parquet")
    assert res.height >= 4 and set(res["status"]) == {"completed"}
    assert not any(c.startswith("auroc/") for c in res.columns)
    report = (out / "report.md").read_text()
    assert f"The MEDS dataset `{meds.resolve()}` (ehrfm.tokenization.etl " in report
    assert "No clinical labels: MEDS " in report and "None: the data gave no clinical labels" in report
    assert "| probe vs counts + logistic | >= 2 tasks better | no clinical labels | not measured |" in report
    assert f"ehrfm tokenize {meds.resolve()} --out tokens" in report and "ehrfm labels" not in report
