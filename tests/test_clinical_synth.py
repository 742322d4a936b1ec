"""Clinical heads on the real pipeline: 2,000 synthetic patients -> MEDS -> tokens -> a small
trained model -> labels -> probe, baseline, zero-shot, score_run (what sweeps call)."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
import torch
from ecosystem import meds_evaluation_auroc

from ehrfm.clinical.labels import TASKS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


N_PATIENTS = 2000


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from ehrfm.clinical.labels import make_labels, write_labels
    from ehrfm.config import TrainConfig
    from ehrfm.train import train
    from tokenization.etl import etl
    from tokenization.synth import synthesize
    from tokenization.tokenize import tokenize

    root = tmp_path_factory.mktemp("clinical2000")
    synthesize(root / "raw", n_patients=N_PATIENTS, seed=0)
    etl(root / "raw", root / "meds")
    tokenize(root / "meds", root / "tok")
    labels, info = make_labels(root / "meds", "all")
    (root / "labels").mkdir()
    for task, frame in labels.items():
        write_labels(frame, root / "labels" / f"{task}.parquet", info[task])
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    result = train(
        TrainConfig(tokens_dir=str(root / "tok"), out_dir=str(root / "run"), n_layer=2, d_model=64, n_head=2, context=256,
                    tokens=200_000, batch_size=16, lr=3e-3, eval_tokens=32_768, seed=0)
    )
    torch.set_num_threads(n)
    assert result["status"] == "completed"
    return root, info


def test_label_counts_on_synthetic_cohort(pipeline):
    root, info = pipeline
    for task in TASKS:
        i = info[task]
        assert i["n"] > 1000 and 0.02 < i["prevalence"] < 0.5, (task, i["n"], i["prevalence"])
    # every stay has a discharge in the synthetic data; mortality and long stay share exclusions
    assert info["in_hospital_mortality"]["n"] == info["long_los"]["n"]
    assert info["readmission_30d"]["excluded"]["died_in_hospital"] > 0


def test_probe_and_baseline_beat_chance_on_mortality(pipeline, tmp_path):
    from ehrfm.clinical.baseline import BaselineConfig, baseline
    from ehrfm.clinical.probe import ProbeConfig, probe

    root, _ = pipeline
    labels = root / "labels" / "in_hospital_mortality.parquet"
    p = probe(ProbeConfig(str(root / "run"), str(root / "tok"), str(labels), bootstrap=300), tmp_path / "probe")
    lo, hi = p["auroc_ci"]
    assert p["auroc"] > 0.65 and lo > 0.55 and lo < p["auroc"] < hi, p["auroc_ci"]
    assert p["n"] > 250 and p["selection"]["selected_on"] == "tuning"
    saved = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert saved["auroc_ci"] == [lo, hi] and saved["prevalence"] == p["prevalence"]

    b = baseline(BaselineConfig(str(root / "meds"), str(labels), bootstrap=300), tmp_path / "base")
    for name, m in b["models"].items():
        assert m["auroc"] > 0.65 and m["auroc_ci"][0] > 0.55, (name, m["auroc"], m["auroc_ci"])
    assert b["n"] == p["n"]  # same held_out labels (one split per subject in MEDS and tokens)


def test_events_after_prediction_time_change_no_probe_score(pipeline, tmp_path):
    """Append telling events (death, ICU) one minute after each held_out subject's last prediction time,
    re-tokenize with the same tokenizer: held_out representations and scores are unchanged."""
    from ehrfm.clinical.model_io import embed_histories, load_run
    from ehrfm.clinical.probe import ProbeConfig, load_label_histories, probe_scores
    from ehrfm.tokens import TokenDir
    from tokenization.tokenize import tokenize

    root, _ = pipeline
    labels_path = root / "labels" / "in_hospital_mortality.parquet"
    labels = pl.read_parquet(labels_path)
    meds2 = tmp_path / "meds"
    import shutil

    shutil.copytree(root / "meds", meds2)
    shard = meds2 / "data" / "held_out" / "0.parquet"
    data = pl.read_parquet(shard)
    # after each subject's LAST prediction time (an event after an earlier label's time is
    # legitimately in the history of the subject's later labels)
    held = (labels.join(data.select("subject_id").unique(), on="subject_id", how="semi")
            .group_by("subject_id").agg(pl.col("prediction_time").max()))
    extra = pl.concat([
        held.select("subject_id", (pl.col("prediction_time") + timedelta(minutes=1)).alias("time"), pl.lit(code).alias("code"))
        for code in ("MEDS_DEATH", "ICU_ADMISSION//Medical Intensive Care Unit (MICU)")
    ])
    extra = extra.with_columns(pl.lit(None, dtype=data.schema["numeric_value"]).alias("numeric_value"))
    for col in data.columns:
        if col not in extra.columns:
            extra = extra.with_columns(pl.lit(None, dtype=data.schema[col]).alias(col))
    extra = extra.select(data.columns).cast(data.schema)
    pl.concat([data, extra]).sort("subject_id", "time", nulls_last=False, maintain_order=True).write_parquet(shard)
    tokenize(meds2, tmp_path / "tok", tokenizer=root / "tok" / "tokenizer.json")
    assert TokenDir(tmp_path / "tok").split("held_out").n_tokens > TokenDir(root / "tok").split("held_out").n_tokens

    out = []
    for tok in (root / "tok", tmp_path / "tok"):
        td = TokenDir(tok)
        h = load_label_histories(td, labels_path, 400, 0)
        model, _ = load_run(root / "run", td)
        ho = h.split == "held_out"
        x = embed_histories(model, td, h, 256)
        p, _ = probe_scores(model, td, h, 256, ProbeConfig(str(root / "run"), str(tok), str(labels_path)), "in_hospital_mortality")
        out.append((x[ho], p[ho]))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_score_run_for_sweeps(pipeline):
    from ehrfm.clinical.utility import label_files, score_run, task_histories

    root, _ = pipeline
    scores = score_run(root / "run", root / "tok", label_files(root / "labels"), max_labels=300, seed=0)
    assert sorted(scores) == sorted([f"{m}/{t}" for t in TASKS for m in ("auroc", "auroc_se", "auprc")])
    for t in TASKS:
        # 30-day readmission has ~25 positives among these held-out labels (AUROC SE ~0.06) and the
        # weakest signal (as in MIMIC-IV): this tiny model's probe is not asked to beat chance on it
        if t != "readmission_30d":
            assert 0.55 < scores[f"auroc/{t}"] <= 1.0, (t, scores[f"auroc/{t}"])
        assert 0.0 <= scores[f"auroc/{t}"] <= 1.0
        assert 0.0 < scores[f"auprc/{t}"] <= 1.0
        assert 0.005 < scores[f"auroc_se/{t}"] < 0.2  # a few hundred held_out labels: a few points of AUROC
    # the label sample is fixed by (labels, max_labels, seed): scoring again gives the same numbers
    mort = {"in_hospital_mortality": root / "labels" / "in_hospital_mortality.parquet"}
    again = score_run(root / "run", root / "tok", mort, max_labels=300, seed=0)
    assert again == {k: v for k, v in scores.items() if k.endswith("/in_hospital_mortality")}
    # long stay predicts at mortality's times: scored alone, or on the embeddings mortality's probe
    # made in the same call, it gives the same numbers
    los = score_run(root / "run", root / "tok", {"long_los": root / "labels" / "long_los.parquet"}, max_labels=300, seed=0)
    assert los == {k: v for k, v in scores.items() if k.endswith("/long_los")}
    # a sweep locates the sample once (task_histories) and scores every run on it: same numbers
    shared = task_histories(root / "tok", label_files(root / "labels"), max_labels=300, seed=0)
    assert score_run(root / "run", root / "tok", label_files(root / "labels"), max_labels=300, seed=0, histories=shared) == scores


def test_cli_zeroshot_and_finetune(pipeline, tmp_path, capsys):
    from ehrfm.app.cli import main

    root, _ = pipeline
    labels = str(root / "labels" / "in_hospital_mortality.parquet")
    rc = main(["zeroshot", str(root / "run"), "--tokens", str(root / "tok"), "--labels", labels, "--out", str(tmp_path / "zs"),
               "--samples", "8", "--max-new-tokens", "64", "--max-labels", "40", "--bootstrap", "100",  # --task: from the file name
               "--undecided", "negative"])
    assert rc == 0
    m = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    assert m["n"] == 40 and m["head"] == "zeroshot" and "MEDS_DEATH" in m["outcome_tokens"]
    assert m["undecided_rule"] == "negative" and m["max_new_tokens"] == 64 and 0 <= m["undecided_share"] < 1
    pred = pl.read_parquet(tmp_path / "zs" / "predictions.parquet")
    prob = pred["predicted_boolean_probability"]
    # undecided counted as negatives: outcomes over the 8 samples less those a transfer ended (no label)
    assert prob.is_between(0, 1).all()
    assert all(any(abs(p * k - round(p * k)) < 1e-5 for k in range(1, 9)) for p in prob.to_list())
    assert abs(meds_evaluation_auroc(tmp_path / "zs" / "predictions.parquet") - m["auroc"]) < 1e-6
    rc = main(["finetune", str(root / "run"), "--tokens", str(root / "tok"), "--labels", labels, "--out", str(tmp_path / "ft"),
               "--max-labels", "600", "--epochs", "8", "--lr", "1e-2", "--bootstrap", "100"])
    assert rc == 0
    f = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert f["auroc"] > 0.6 and f["best_epoch"] >= 1
    assert "finetune in_hospital_mortality" in capsys.readouterr().out


def test_run_and_token_dir_from_different_tokenizers_refused(pipeline, tmp_path):
    """A token dir fitted with another min_count has other ids: refused before any scoring."""
    from ehrfm.app.cli import main
    from tokenization.tokenize import tokenize

    root, _ = pipeline
    tokenize(root / "meds", tmp_path / "tok_other", min_count=50)
    labels = root / "labels" / "in_hospital_mortality.parquet"
    n_rows = pl.read_parquet(labels).height
    from ehrfm.clinical.probe import ProbeConfig, probe
    from ehrfm.errors import UserError

    with pytest.raises(UserError, match=rf"vocab mismatch: run .* was trained on tokenizer .* all {n_rows} label rows affected"):
        probe(ProbeConfig(str(root / "run"), str(tmp_path / "tok_other"), str(labels)), tmp_path / "p")
    assert main(["zeroshot", str(root / "run"), "--tokens", str(tmp_path / "tok_other"), "--labels", str(labels),
                 "--out", str(tmp_path / "z"), "--task", "in_hospital_mortality"]) == 2
    assert not (tmp_path / "p").exists() and not (tmp_path / "z").exists()
