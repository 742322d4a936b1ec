"""A thirteenth clinical review (a helper trying the heads as a user), on real files and a really trained model.

- A data set re-split and tokenized into the run's own token dir (same path, the run's tokenizer) was probed
  without a word: 150 of 183 held-out subjects had been in the run's pretraining train split. The
  "pretrained on" check returned early for the run's own token dir; it now compares the train split's
  content with the run's record (config.json data.train_sha256) and refuses a rewritten one.
- The heads scored a label file whose histories hold their task's outcome (an ICU-admission label predicted
  a minute before discharge: probe AUROC 0.999, baseline 0.995) without a word; only `ehrfm audit` said
  LEAKAGE. Each head now runs the audit's checks on a user's label file and warns, counting the labels.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import polars as pl
import pytest

from ehrfm.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ehrfm(*argv) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "ehrfm", *map(str, argv)], capture_output=True, text=True,
                          env={**os.environ, "EHRFM_QUIET": "1"}, timeout=900)


@pytest.fixture(scope="module")
def own_chain(tmp_path_factory):
    """synth -> etl -> tokenize -> labels -> a tiny run, private: a test rewrites the token dir."""
    from conftest import private_synth_pipeline

    from ehrfm.config import TrainConfig
    from ehrfm.train import train

    paths = private_synth_pipeline(tmp_path_factory.mktemp("faults13"), 600, seed=5, labels=True)
    paths["run"] = paths["base"] / "run"
    train(TrainConfig(tokens_dir=str(paths["tok"]), out_dir=str(paths["run"]), n_layer=1, d_model=16, n_head=2, context=64,
                      tokens=20_000, batch_size=8, eval_tokens=1024))
    return paths


def test_a_token_dir_re_split_in_place_after_pretraining_is_refused_by_the_heads(own_chain, tmp_path):
    from ehrfm.clinical.probe import ProbeConfig, probe
    from tokenization.etl import etl
    from tokenization.tokenize import tokenize

    labels = own_chain["labels"] / "in_hospital_mortality.parquet"
    cfg = ProbeConfig(run_dir=str(own_chain["run"]), tokens_dir=str(own_chain["tok"]), labels=str(labels), bootstrap=0)
    probe(cfg, tmp_path / "before")  # the run's own token dir, as trained on: scored
    # the same patients split again with another seed, tokenized with the run's tokenizer into the same dir
    shutil.copy(own_chain["tok"] / "tokenizer.json", tmp_path / "tokenizer.json")
    etl(own_chain["raw"], own_chain["meds"], overwrite=True, split_seed=7)
    tokenize(own_chain["meds"], own_chain["tok"], overwrite=True, tokenizer=tmp_path / "tokenizer.json")
    with pytest.raises(UserError, match=r"token dir .* was rewritten since run .* trained on it \(its train split's content "
                                        r"differs from data.train_sha256 in .*config.json\)"):
        probe(cfg, tmp_path / "after")
    assert not (tmp_path / "after").exists()


@pytest.fixture(scope="module")
def leaky_labels(synth_meds, tmp_path_factory):
    """ICU-admission labels predicted a minute before each stay's discharge: the histories hold the outcome."""
    from ehrfm.clinical.labels import make_labels

    labels, _ = make_labels(synth_meds, "icu_admission")
    ev = pl.read_parquet(synth_meds / "data" / "*" / "*.parquet")
    adm = ev.filter(pl.col("code").str.starts_with("HOSPITAL_ADMISSION//")).select("subject_id", "hadm_id", pl.col("time").alias("prediction_time"))
    dis = ev.filter(pl.col("code").str.starts_with("HOSPITAL_DISCHARGE//")).select("subject_id", "hadm_id", pl.col("time").alias("dis"))
    out = tmp_path_factory.mktemp("leaky") / "icu_admission.parquet"
    (labels.join(adm, on=["subject_id", "prediction_time"]).join(dis, on=["subject_id", "hadm_id"])
     .select("subject_id", (pl.col("dis") - pl.duration(minutes=1)).alias("prediction_time"), "boolean_value")
     .unique(["subject_id", "prediction_time"]).sort("subject_id", "prediction_time").write_parquet(out))
    return out


def test_the_heads_warn_of_a_label_file_whose_histories_hold_the_outcome(synth_meds, synth_tokens, tiny_run, leaky_labels, tmp_path):
    from ehrfm.clinical.audit import audit

    n_leaking = audit(synth_meds, leaky_labels).tasks["icu_admission"].outcome_code_in_history
    n = pl.read_parquet(leaky_labels).height
    assert n_leaking > 100
    said = f"label file {leaky_labels}: `ehrfm audit` finds {n_leaking} of {n} labels whose history may hold their icu_admission outcome"
    p = _ehrfm("probe", tiny_run, "--tokens", synth_tokens, "--labels", leaky_labels, "--out", tmp_path / "p", "--bootstrap", "0")
    assert p.returncode == 0 and said in p.stderr, p.stderr
    p = _ehrfm("baseline", synth_meds, "--labels", leaky_labels, "--out", tmp_path / "b", "--bootstrap", "0")
    assert p.returncode == 0 and said in p.stderr, p.stderr
    # the verdict is in the outputs beside the scores it qualifies, not only on stderr (2026-12-07: a helper)
    import json

    for head in ("p", "b"):
        verdict = json.loads((tmp_path / head / "metrics.json").read_text())["label_audit"]
        assert verdict["checked"] and verdict["look_ahead"] and verdict["outcome_checked"], verdict
        assert verdict["outcome_in_history"] == n_leaking and verdict["n_labels"] == n, verdict


def test_labels_ehrfm_made_from_the_same_data_are_not_audited_again_and_clean_user_labels_pass(synth_meds, synth_tokens, tiny_run, tmp_path):
    from ehrfm.clinical.labels import make_labels, write_label_dir

    write_label_dir(*make_labels(synth_meds, "all"), tmp_path / "labels")
    ours = tmp_path / "labels" / "icu_admission.parquet"
    copied = tmp_path / "icu_admission.parquet"  # the same rows, written by the user's own code: audited, clean
    pl.read_parquet(ours).write_parquet(copied)
    for labels in (ours, copied):
        p = _ehrfm("probe", tiny_run, "--tokens", synth_tokens, "--labels", labels, "--out", tmp_path / f"p_{labels.parent.name}",
                   "--bootstrap", "0")
        assert p.returncode == 0 and "may hold their" not in p.stderr, p.stderr
        verdict = __import__("json").loads((tmp_path / f"p_{labels.parent.name}" / "metrics.json").read_text())["label_audit"]
        assert verdict["checked"] and verdict["look_ahead"] is False and verdict["outcome_in_history"] == 0, verdict


@pytest.mark.parametrize("make", ["ProbeConfig", "BaselineConfig", "FinetuneConfig", "ZeroShotConfig"])
def test_a_bootstrap_of_a_few_resamples_is_refused(make):
    import ehrfm.clinical.configs as configs

    cls = getattr(configs, make)
    kw = {"meds_dir": "m", "labels": "l"} if make == "BaselineConfig" else {"run_dir": "r", "tokens_dir": "t", "labels": "l"}
    for n in (1, 3, 19):
        with pytest.raises(UserError, match=rf"--bootstrap {n}: must be 0 \(no intervals\) or at least 20"):
            cls(bootstrap=n, **kw)
    assert cls(bootstrap=0, **kw).bootstrap == 0 and cls(bootstrap=20, **kw).bootstrap == 20


def test_finetune_says_when_its_epoch_is_chosen_on_one_class(synth_meds, synth_tokens, tiny_run, tmp_path):
    from ehrfm.clinical.labels import make_labels

    labels, _ = make_labels(synth_meds, "in_hospital_mortality")
    splits = pl.read_parquet(synth_meds / "metadata" / "subject_splits.parquet")
    one_class = tmp_path / "in_hospital_mortality.parquet"
    (labels.join(splits, on="subject_id").filter((pl.col("split") != "tuning") | ~pl.col("boolean_value"))
     .drop("split").write_parquet(one_class))
    p = _ehrfm("finetune", tiny_run, "--tokens", synth_tokens, "--labels", one_class, "--out", tmp_path / "ft",
               "--epochs", "1", "--bootstrap", "0")
    assert p.returncode == 0 and "the tuning split's" in p.stderr and "labels are all one class: the epoch is chosen by " \
        "tuning log loss" in p.stderr, p.stderr


def test_the_audit_verdict_names_each_checks_count_instead_of_adding_them():
    from ehrfm.clinical.audit import AuditResult, TaskAudit
    from ehrfm.clinical.cli import leak_verdicts

    both = TaskAudit("in_hospital_mortality", 1720, 436, 1720, 0, None, 0)
    one = TaskAudit("icu_admission", 900, 12, 0, 0, None, 0)
    clean = TaskAudit("long_los", 900, 0, 0, 0, None, 0)
    res = AuditResult("m", "l", {}, None, None, {t.task: t for t in (both, one, clean)}, None, {})
    assert leak_verdicts(res) == ["in_hospital_mortality ((a) 436, (b) 1720, of 1720 labels)", "icu_admission (12)"]


def test_the_demo_and_sweep_collect_refuse_too_few_resamples_and_replicates_before_any_stage(tmp_path):
    from ehrfm.app.demo import DemoConfig

    for kw, says in ((dict(head_bootstrap=5), "--head-bootstrap"), (dict(run_seeds=101), "--run-seeds")):
        with pytest.raises(UserError, match=says):
            DemoConfig(out=str(tmp_path / "d"), **kw).checked()
    assert not (tmp_path / "d").exists()


def test_sweep_collect_refuses_a_utility_bootstrap_of_a_few_resamples(tmp_path):
    from sweeps.collect import collect_sweep

    with pytest.raises(UserError, match=r"--utility-boot must be 0 \(no intervals\) or a whole number >= 20 \(got 3\)"):
        collect_sweep(_finished_sweep(tmp_path), utility_boot=3)


def _finished_sweep(tmp_path):
    from conftest import private_synth_pipeline

    from sweeps.launch import LaunchConfig, launch_sweep
    from sweeps.plan import plan_sweep

    paths = private_synth_pipeline(tmp_path / "chain", 300, seed=2)
    out = tmp_path / "sweep"
    plan_sweep(paths["tok"], [2e8], out, sizes=1, context=64, min_steps=1, train={"batch_size": 4})
    launch_sweep(out, LaunchConfig(executor="local", wait=True))
    return out
