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
    assert json.loads((out / "labels" / "readmission_30d.json").read_text())["n"] == 255  # 257 before discharges to another hospital were excluded, 256 before later_stay_in_history
    assert json.loads((out / "audit.json").read_text())  # the leakage audit of those labels
    res = pl.read_parquet(out / "sweep" / "results.parquet")
    assert res.height >= 4 and set(res["status"]) == {"completed"} and (res["epochs"] < 1).all()
    for task in ("in_hospital_mortality", "long_los", "icu_admission", "readmission_30d"):
        assert (out / "heads" / task / "baseline" / "metrics.json").is_file()
    report = (out / "report.md").read_text()
    # The header gives the whole command (every flag off its default), so it can be run again as written.
    assert (f"by `ehrfm demo --quick --out {out} --raw {cfg['raw']} --budgets 2e+10,4e+10 --sizes 3 --first-stage 0 --bracket 0 "
            "--bootstrap 0`") in report
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
    # The commands to reproduce it run no labels stage (the labels' own message, quoted above, names `ehrfm labels`).
    assert f"ehrfm tokenize {meds.resolve()} --out tokens" in report
    assert not [ln for ln in report.splitlines() if ln.lstrip("`$ ").startswith("ehrfm labels ")], report


def test_collect_scores_the_tasks_it_can_and_names_the_others(capsys):
    """A task with one class in train (a hospital without ICU data: every ICU label negative) or
    without held_out labels failed `sweep collect --labels` for every task, after the whole sweep
    had trained (and the demo with it, on every resume)."""
    from pathlib import Path

    import numpy as np

    from ehrfm.clinical.histories import Histories
    from sweeps.collect import _scorable_tasks

    def hist(splits, values):
        frame = pl.DataFrame({"subject_id": list(range(len(splits))), "boolean_value": values, "split": splits})
        return Histories(frame, np.zeros(len(splits), dtype=np.int64), np.ones(len(splits), dtype=np.int64))

    histories = {"icu_admission": hist(["train"] * 3 + ["held_out"], [False] * 4),
                 "long_los": hist(["train"] * 3 + ["held_out"], [True, False, True, False]),
                 "mortality": hist(["train", "train"], [True, False])}
    labels = {t: Path(f"labels/{t}.parquet") for t in histories}
    assert list(_scorable_tasks(labels, histories)) == ["long_los"]
    err = capsys.readouterr().err.splitlines()
    assert err == ["ehrfm sweep collect: warning: task icu_admission: the train split's 3 labels are all negative; a head "
                   "needs both classes (labels/icu_admission.parquet): not scored",
                   "ehrfm sweep collect: warning: task mortality: no labels in the held_out split "
                   "(labels/mortality.parquet): not scored"]


def test_a_demo_dir_that_made_nothing_takes_corrected_settings(tmp_path):
    """A first try that failed before its first output (a wrong flag, the wrong folder) left only its
    settings; the corrected command was refused as "other settings" and needed --overwrite."""
    from ehrfm.app.demo import run_demo
    from ehrfm.errors import UserError
    from ehrfm.io import mark_output, write_json

    out, raw = tmp_path / "study", tmp_path / "mimic"
    (raw / "hosp").mkdir(parents=True)  # raw MIMIC-IV without its tables: the ETL, the first stage, refuses it
    out.mkdir()
    mark_output(out, "demo")
    write_json(out / "demo_config.json", DemoConfig.quick_config(out=str(out), patients=50))
    with pytest.raises(UserError, match="required table hosp/patients"):
        run_demo(DemoConfig.quick_config(out=str(out), raw=str(raw)))
    assert json.loads((out / "demo_config.json").read_text())["raw"] == str(raw.resolve())  # the new settings
    # Once a stage has made something, other settings are refused again (the test above: other data).
    (out / "tokens").mkdir()
    with pytest.raises(UserError, match="holds a demo made with other settings"):
        run_demo(DemoConfig.quick_config(out=str(out), raw=str(raw), seed=3))


def test_resuming_with_other_files_at_the_same_path_is_refused_and_moved_files_resume(tmp_path):
    from ehrfm.app.demo import _data_fingerprint, run_demo
    from ehrfm.errors import UserError
    from ehrfm.io import mark_output, write_json

    raw = tmp_path / "mimic"
    (raw / "hosp").mkdir(parents=True)
    (raw / "hosp" / "omr.csv.gz").write_bytes(b"x" * 100_000)
    out = tmp_path / "study"
    out.mkdir()
    mark_output(out, "demo")
    cfg, _ = DemoConfig.quick_config(out=str(out), raw=str(raw)).checked()
    write_json(out / "demo_config.json", cfg)
    write_json(out / "progress.json", {"data_fingerprint": _data_fingerprint(str(raw))})
    (out / "meds").mkdir()  # the ETL's output: this demo made something from those files
    (raw / "hosp" / "omr.csv.gz").unlink()  # the user's data changed at the same path
    with pytest.raises(UserError, match=r"files changed since .* was made from them"):
        run_demo(DemoConfig.quick_config(out=str(out), raw=str(raw)))
    # The same files moved elsewhere: a new path is no new study (it fails later, at the empty meds/).
    (raw / "hosp" / "omr.csv.gz").write_bytes(b"x" * 100_000)
    moved = tmp_path / "moved"
    raw.rename(moved)
    with pytest.raises(UserError) as e:
        run_demo(DemoConfig.quick_config(out=str(out), raw=str(moved)))
    assert "other settings" not in str(e.value) and "changed since" not in str(e.value), e.value
    assert f"{out / 'meds'} is not a MEDS dataset" in str(e.value), e.value  # it got that far: resumed, not refused


def test_own_meds_without_a_tuning_split_is_refused_before_any_run(demo_meds, tmp_path):
    """Only a train split: every run failed ("token dir has no split 'tuning'"), the demo exited 0 and
    its report blamed the budgets."""
    import shutil

    meds = tmp_path / "train_only"
    shutil.copytree(demo_meds / "metadata", meds / "metadata")
    shutil.copytree(demo_meds / "data" / "train", meds / "data" / "train")
    out = tmp_path / "study"
    p = ehrfm("demo", "--meds", meds, "--out", out, *TINY)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    line = p.stderr.strip().splitlines()[-1]  # after the tokenize stage's banner
    assert line == (f"ehrfm demo: error: MEDS {meds.resolve()}: no tokens in its tuning split(s): every run trains on "
                    "train and reports its loss on tuning (MEDS splits train/tuning/held_out, or "
                    "metadata/subject_splits.parquet)"), line
    assert not (out / "sweep").exists()


def test_a_demo_dir_from_before_seed_steps_and_the_bracket_margin_is_not_resumed_on_them():
    """A demo dir made before --seed-steps and --bracket-margin ran without extra seeds and bracketed only a
    minimum at an end: resuming it with today's defaults (600, 2) would plan runs it never had, so it is refused
    and the change named; with the old values it resumes. A --quick dir (0, 1 today) resumes as it was."""
    import dataclasses

    from ehrfm.app.demo import _config_changes

    new = json.loads(json.dumps(dataclasses.asdict(DemoConfig())))
    old = {k: v for k, v in new.items() if k not in ("seed_steps", "bracket_margin")}
    hard, _ = _config_changes(old, new)
    assert hard == ["bracket_margin 1 -> 2", "seed_steps 0 -> 600"]
    assert _config_changes(old, {**new, "seed_steps": 0, "bracket_margin": 1}) == ([], [])
    quick = json.loads(json.dumps(dataclasses.asdict(DemoConfig.quick_config())))
    assert _config_changes({k: v for k, v in quick.items() if k not in ("seed_steps", "bracket_margin")}, quick) == ([], [])
