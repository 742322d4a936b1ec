"""Model heads on a hand-built token dir and a real (randomly initialised) GPT checkpoint:
history cut at prediction time, batching invariance, bad input, zero-shot rollout arithmetic."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from bad_labels import with_ghost_subjects, with_prediction_time
from ecosystem import PREDICTION_COLUMNS, meds_evaluation_auroc

from ehrfm.errors import UserError

T0 = datetime(2150, 1, 1)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


VOCAB = ["PAD", "UNK", "TIMELINE_END", "GENDER//F", "MEDS_DEATH", "HOSPITAL_DISCHARGE//HOME", "HOSPITAL_ADMISSION//EW",
         "ICU_ADMISSION//MICU", "LAB//A", "LAB//B", "LAB//C", "1h-2h"]


def us(t: datetime) -> int:
    return int((t - datetime(1970, 1, 1)).total_seconds() * 1_000_000)


def write_token_dir(root: Path, timelines: dict[str, list[tuple[int, list[tuple[str, datetime]]]]], vocab=VOCAB) -> Path:
    """A token dir in the DESIGN.md section 2 layout from {split: [(subject_id, [(token, time)])]}."""
    root.mkdir(parents=True)
    (root / "tokenizer.json").write_text(json.dumps({"vocab": vocab}))
    ids = {t: i for i, t in enumerate(vocab)}
    for split, subjects in timelines.items():
        (root / split).mkdir()
        toks, times, index, off = [], [], [], 0
        for sid, events in subjects:
            toks += [ids[t] for t, _ in events]
            times += [us(when) for _, when in events]
            index.append((sid, off, len(events)))
            off += len(events)
        np.save(root / split / "tokens.npy", np.array(toks, dtype=np.uint16))
        np.save(root / split / "times.npy", np.array(times, dtype=np.int64))
        pq.write_table(
            pa.table({"subject_id": pa.array([i[0] for i in index], pa.int64()), "offset": pa.array([i[1] for i in index], pa.int64()),
                      "length": pa.array([i[2] for i in index], pa.int64())}),
            root / split / "index.parquet",
        )
    return root


def timeline(sid: int, positive: bool, extra_after: list[tuple[str, datetime]] = ()) -> tuple[int, list]:
    """Admission at T0; the last token before T0 + 24 h is LAB//A for positives, LAB//B otherwise."""
    ev = [("GENDER//F", T0 - timedelta(days=400)), ("LAB//C", T0 - timedelta(days=400 - sid % 7)),
          ("HOSPITAL_ADMISSION//EW", T0), ("1h-2h", T0 + timedelta(hours=1)),
          ("LAB//A" if positive else "LAB//B", T0 + timedelta(hours=1))]
    ev += list(extra_after)
    ev += [("HOSPITAL_DISCHARGE//HOME", T0 + timedelta(days=3)), ("TIMELINE_END", T0 + timedelta(days=3))]
    ev.sort(key=lambda e: e[1])
    return sid, ev


def make_cohort(root: Path, leak: bool = False) -> tuple[Path, Path]:
    """60 train, 20 tuning, 20 held_out subjects; labels at T0 + 24 h = positive flag."""
    rng = np.random.default_rng(0)
    timelines, rows = {}, []
    sid = 0
    for split, n in (("train", 60), ("tuning", 20), ("held_out", 20)):
        subjects = []
        for _ in range(n):
            sid += 1
            pos = bool(rng.random() < 0.4)
            # leak=True: events after the prediction time that give the outcome away
            after = [("MEDS_DEATH" if pos else "LAB//C", T0 + timedelta(hours=30)), ("ICU_ADMISSION//MICU", T0 + timedelta(hours=25))] if leak else []
            subjects.append(timeline(sid, pos, after))
            rows.append((sid, T0 + timedelta(hours=24), pos))
        timelines[split] = subjects
    td = write_token_dir(root / "tok", timelines)
    labels = pl.DataFrame(rows, schema={"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"), "boolean_value": pl.Boolean}, orient="row")
    labels.write_parquet(root / "in_hospital_mortality.parquet")
    return td, root / "in_hospital_mortality.parquet"


def save_random_run(run_dir: Path, vocab_size: int, fingerprint: str, seed: int = 0) -> Path:
    from ehrfm.checkpoint import save_checkpoint
    from ehrfm.config import ModelConfig
    from ehrfm.model import GPT

    torch.manual_seed(seed)
    model = GPT(ModelConfig(n_layer=2, d_model=32, n_head=2, context=64, vocab_size=vocab_size))
    save_checkpoint(run_dir, model, None, {"step": 0, "tokenizer_fingerprint": fingerprint})
    (run_dir / "result.json").write_text(json.dumps({"status": "completed"}))
    return run_dir


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from ehrfm.tokens import TokenDir

    root = tmp_path_factory.mktemp("heads")
    tok, labels = make_cohort(root)
    run = save_random_run(root / "run", len(VOCAB), TokenDir(tok).fingerprint)
    return tok, labels, run


def test_history_cut_and_end_token(cohort, tmp_path):
    from ehrfm.clinical.histories import locate_histories, select
    from ehrfm.clinical.labels import read_labels
    from ehrfm.tokens import TokenDir

    tok, labels, run = cohort
    td = TokenDir(tok)
    h = locate_histories(td, read_labels(labels))
    # every history ends at the LAB//A|B token at T0 + 1 h (5 tokens), never beyond
    assert (h.lengths() == 5).all()
    last = [td.decode([td.split(s).tokens[e - 1]])[0] for s, e in zip(h.split, h.stop, strict=False)]
    assert last == ["LAB//A" if y else "LAB//B" for y in h.y]
    # a label at the discharge time: the discharge is history, the TIMELINE_END after it is not
    at_dis = read_labels(labels).head(1).with_columns(pl.lit(T0 + timedelta(days=3)).cast(pl.Datetime("us")).alias("prediction_time"))
    h2 = locate_histories(td, at_dis)
    sp = td.split(h2.split[0])
    assert td.decode([sp.tokens[h2.stop[0] - 1]]) == ["HOSPITAL_DISCHARGE//HOME"]
    # split and y are converted once: history_window reads them per label, and converting the
    # column on each access made embedding n labels O(n^2) (8 min for the demo's 80k labels)
    assert h.split is h.split and h.y is h.y
    sub = select(h, h.y == 1)
    assert (sub.y == 1).all() and list(sub.split) == [s for s, y in zip(h.split, h.y, strict=True) if y]


def test_events_after_prediction_time_change_no_feature_and_no_score(cohort, tmp_path):
    from ehrfm.clinical.model_io import embed_histories, load_run
    from ehrfm.clinical.probe import ProbeConfig, load_label_histories, probe_scores
    from ehrfm.tokens import TokenDir

    tok, labels, run = cohort
    leaky_tok, _ = make_cohort(tmp_path, leak=True)
    results = []
    for t in (tok, leaky_tok):
        td = TokenDir(t)
        h = load_label_histories(td, labels, None, 0)
        model, _ = load_run(run, td)
        x = embed_histories(model, td, h, context=64, batch_size=7)
        p, _ = probe_scores(model, td, h, 64, ProbeConfig(str(run), str(t), str(labels)), "in_hospital_mortality")
        results.append((x, p))
    assert np.array_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])
    # the leaky dir really holds the extra tokens
    assert TokenDir(leaky_tok).split("train").n_tokens == TokenDir(tok).split("train").n_tokens + 2 * 60


def test_representation_independent_of_batching_and_context(cohort):
    from ehrfm.clinical.model_io import embed_histories, load_run
    from ehrfm.clinical.probe import load_label_histories
    from ehrfm.tokens import TokenDir

    tok, labels, run = cohort
    td = TokenDir(tok)
    h = load_label_histories(td, labels, None, 0)
    model, _ = load_run(run, td)
    a = embed_histories(model, td, h, 64, batch_size=1)
    b = embed_histories(model, td, h, 64, batch_size=32)
    np.testing.assert_allclose(a, b, atol=1e-5)
    c = embed_histories(model, td, h, 2, batch_size=32)  # only the last 2 tokens
    assert not np.allclose(a, c, atol=1e-3)


def test_a_histories_representation_and_the_probe_do_not_move_with_the_batch_size(synth_meds, synth_tokens, tiny_run, tmp_path):
    """Before: each batch was padded to its longest window, so a history's states depended on its
    batch-mates (~1e-6), and the probe's choice of C between near-tied tuning AUROCs flipped with
    --batch-size (held-out AUROC 0.909 at 64, 0.905 at 9). Now a window is padded by its own length."""
    from ehrfm.clinical.labels import make_labels, write_label_dir
    from ehrfm.clinical.model_io import embed_histories, load_run, padded_lengths
    from ehrfm.clinical.probe import ProbeConfig, load_label_histories, probe
    from ehrfm.tokens import TokenDir

    frame, info = make_labels(synth_meds, "long_los")
    write_label_dir({"long_los": frame}, {"long_los": info}, tmp_path / "labels")
    labels = tmp_path / "labels" / "long_los.parquet"
    td = TokenDir(synth_tokens)
    h = load_label_histories(td, labels, None, 0)
    model, mcfg = load_run(tiny_run, td)
    windows = np.minimum(h.lengths(), mcfg.context)
    assert len(np.unique(padded_lengths(windows, mcfg.context))) == 2 and len(np.unique(windows)) > 20  # mixed lengths
    x = {bs: embed_histories(model, td, h, mcfg.context, batch_size=bs, pooling="last+mean+max") for bs in (64, 5)}
    assert np.array_equal(x[64], x[5])
    metrics = [probe(ProbeConfig(str(tiny_run), str(synth_tokens), str(labels), batch_size=bs, bootstrap=0), tmp_path / f"p{bs}")
               for bs in (64, 5)]
    assert metrics[0]["auroc"] == metrics[1]["auroc"] and metrics[0]["selection"] == metrics[1]["selection"]


def test_mean_and_max_pooling_are_over_the_window_without_padding(cohort):
    """The probe's representations: the last state, then the mean of the window's states, then their
    feature-wise max (the default), each window run alone (no padding to average or take the max of)."""
    import torch

    from ehrfm.clinical.histories import Histories, history_window
    from ehrfm.clinical.model_io import embed_histories, load_run
    from ehrfm.clinical.probe import load_label_histories
    from ehrfm.tokens import TokenDir

    tok, labels, run = cohort
    td = TokenDir(tok)
    h = load_label_histories(td, labels, None, 0)
    # every history here has 5 tokens: cut every other one to 2 so that batches hold padding
    h = Histories(h.labels, h.start, np.where(np.arange(len(h.start)) % 2 == 0, h.stop, h.start + 2))
    model, cfg = load_run(run, td)
    last = embed_histories(model, td, h, 64, batch_size=32)
    both = embed_histories(model, td, h, 64, batch_size=32, pooling="last+mean")
    assert both.shape == (len(h.start), 2 * cfg.d_model)
    np.testing.assert_array_equal(both[:, : cfg.d_model], last)
    lengths = np.minimum(h.lengths(), 64)
    assert len(set(lengths.tolist())) > 1  # batches really hold padding
    with torch.no_grad():
        for k in range(len(h.start)):
            w = torch.from_numpy(history_window(td, h, k, 64))[None]
            np.testing.assert_allclose(both[k, cfg.d_model :], model.hidden_states(w)[0].mean(0).numpy(), atol=1e-5)
    three = embed_histories(model, td, h, 64, batch_size=32, pooling="last+mean+max")
    assert three.shape == (len(h.start), 3 * cfg.d_model)
    np.testing.assert_array_equal(three[:, : 2 * cfg.d_model], both)
    with torch.no_grad():
        for k in range(len(h.start)):
            w = torch.from_numpy(history_window(td, h, k, 64))[None]
            np.testing.assert_allclose(three[k, 2 * cfg.d_model :], model.hidden_states(w)[0].amax(0).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        embed_histories(model, td, h, 64, pooling="max")
    # "layers" (the probe's default since 2026-12-06): last+mean+max of each depth, the final one last
    layers = embed_histories(model, td, h, 64, batch_size=32, pooling="layers")
    width = 3 * cfg.d_model
    assert layers.shape == (len(h.start), width * (cfg.n_layer + 1))
    np.testing.assert_array_equal(layers[:, -width:], three)
    with torch.no_grad():
        for k in range(len(h.start)):
            w = torch.from_numpy(history_window(td, h, k, 64))[None]
            emb = model.embed(w)[0]
            emb = emb / emb.pow(2).mean(-1, keepdim=True).add(cfg.norm_eps).sqrt()  # RMS-normed token embeddings
            np.testing.assert_allclose(layers[k, : cfg.d_model], emb[-1].numpy(), atol=1e-5)
            np.testing.assert_allclose(layers[k, cfg.d_model : 2 * cfg.d_model], emb.mean(0).numpy(), atol=1e-5)
            np.testing.assert_allclose(layers[k, 2 * cfg.d_model : width], emb.amax(0).numpy(), atol=1e-5)
    assert np.array_equal(layers, embed_histories(model, td, h, 64, batch_size=5, pooling="layers"))


def test_probe_and_finetune_write_metrics(cohort, tmp_path):
    from ehrfm.clinical.finetune import FinetuneConfig, finetune
    from ehrfm.clinical.probe import ProbeConfig, probe

    tok, labels, run = cohort
    m = probe(ProbeConfig(str(run), str(tok), str(labels), bootstrap=100), tmp_path / "probe")
    saved = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    # the last token encodes the label, so even random features separate the classes
    assert m["auroc"] == saved["auroc"] > 0.95 and m["n"] == 20 and saved["config"]["run_dir"] == str(run)
    assert set(saved) >= {"task", "n", "prevalence", "auroc", "auroc_ci", "auprc", "auprc_ci", "calibration"}
    assert saved["task"] == "in_hospital_mortality"
    # predictions.parquet: exactly the 20 scored held_out rows, meds-evaluation's PredictionSchema;
    # meds-evaluation-cli accepts it and computes our AUROC
    pred = pl.read_parquet(tmp_path / "probe" / "predictions.parquet")
    assert pred.columns == PREDICTION_COLUMNS and pred.height == 20
    assert pred["predicted_boolean_probability"].is_between(0, 1).all()
    assert sum(pl.read_parquet(tmp_path / "probe" / f"predictions_{s}.parquet").height for s in ("train", "tuning")) == 80
    assert abs(meds_evaluation_auroc(tmp_path / "probe" / "predictions.parquet") - saved["auroc"]) < 1e-6
    # history_tokens.parquet: each scored row's whole history length, in predictions.parquet's order; the
    # report reads it (not the token dir again) to compare the heads on histories longer than the window
    from ehrfm.app.demo import _held_out_beyond_context
    from ehrfm.clinical.probe import load_label_histories
    from ehrfm.tokens import TokenDir

    hist = pl.read_parquet(tmp_path / "probe" / "history_tokens.parquet")
    assert hist.select("subject_id", "prediction_time").equals(pred.select("subject_id", "prediction_time"))
    h = load_label_histories(TokenDir(str(tok)), labels, None, 0)
    assert hist["history_tokens"].to_list() == h.lengths()[h.split == "held_out"].tolist()
    (tmp_path / "heads").mkdir()
    (tmp_path / "heads" / "t").symlink_to(tmp_path)  # heads/TASK/probe, as the demo lays them out
    for context in (int(hist["history_tokens"].min()) - 1, int(hist["history_tokens"].max())):  # every one beyond, none
        strata = _held_out_beyond_context(tmp_path / "heads", "t", context)
        assert strata["beyond"].to_list() == (hist["history_tokens"] > context).to_list()
        assert strata["beyond"].sum() == (strata.height if context < hist["history_tokens"].min() else 0)
    assert _held_out_beyond_context(tmp_path / "heads", "absent", context) is None

    f = finetune(FinetuneConfig(str(run), str(tok), str(labels), bootstrap=100, max_epochs=30, lr=3e-2, patience=5), tmp_path / "ft")
    assert f["auroc"] > 0.95 and 1 <= f["best_epoch"] <= len(f["epochs"]) <= 30
    assert abs(meds_evaluation_auroc(tmp_path / "ft" / "predictions.parquet") - f["auroc"]) < 1e-6
    # a seed fixes everything: the same run again gives the same epochs and predictions
    f2 = finetune(FinetuneConfig(str(run), str(tok), str(labels), bootstrap=100, max_epochs=30, lr=3e-2, patience=5), tmp_path / "ft2")
    assert f2["epochs"] == f["epochs"]
    assert pl.read_parquet(tmp_path / "ft2" / "predictions.parquet").equals(pl.read_parquet(tmp_path / "ft" / "predictions.parquet"))
    full = finetune(FinetuneConfig(str(run), str(tok), str(labels), bootstrap=0, max_epochs=3, full=True, seed=1), tmp_path / "ftf")
    assert full["head"] == "finetune_full" and len(full["epochs"]) == 3 and full["auroc"] > 0.5


def test_bad_input_one_clear_error(cohort, tmp_path):
    from ehrfm.app.cli import main
    from ehrfm.clinical.probe import ProbeConfig, probe
    from ehrfm.tokens import TokenDir

    tok, labels, run = cohort
    ghost = with_ghost_subjects(labels, tmp_path / "ghost.parquet", 5, 1000)
    with pytest.raises(UserError, match=r"5 rows \(5 subjects\) have subjects missing from token dir"):
        probe(ProbeConfig(str(run), str(tok), str(ghost)), tmp_path / "o")
    late = with_prediction_time(labels, tmp_path / "late.parquet", 7, T0 + timedelta(days=900))
    with pytest.raises(UserError, match="7 rows have a prediction_time outside the subject's timeline"):
        probe(ProbeConfig(str(run), str(tok), str(late)), tmp_path / "o")
    # a token dir made by another tokenizer (one more token): vocab mismatch, all rows affected
    other, _ = make_cohort(tmp_path / "x")
    other_vocab = VOCAB + ["LAB//D"]
    (other / "tokenizer.json").write_text(json.dumps({"vocab": other_vocab}))
    with pytest.raises(UserError, match=r"vocab mismatch: run .* was trained on tokenizer .* all 100 label rows affected"):
        probe(ProbeConfig(str(run), str(other), str(labels)), tmp_path / "o")
    assert TokenDir(other).fingerprint != TokenDir(tok).fingerprint
    assert not (tmp_path / "o").exists()
    # through the CLI: exit 2, one line
    rc = main(["probe", str(run), "--tokens", str(other), "--labels", str(labels), "--out", str(tmp_path / "o")])
    assert rc == 2


def test_zeroshot_uniform_model_gives_analytic_share(cohort, tmp_path):
    """With all logits zero, sampling is uniform over the vocab: the chance of hitting the outcome
    (MEDS_DEATH) before the competing token (HOSPITAL_DISCHARGE//HOME) is 1/2; TIMELINE_END, an end of
    record, stops 1/3 of the rollouts undecided."""
    from ehrfm.checkpoint import load_model, save_checkpoint
    from ehrfm.clinical.zeroshot import ZeroShotConfig, zeroshot

    tok, labels, run = cohort
    model, _ = load_model(run)
    with torch.no_grad():
        model.head.weight.zero_()
    flat = tmp_path / "flat_run"
    save_checkpoint(flat, model, None, json.loads((run / "checkpoint" / "state.json").read_text()))
    cfg = ZeroShotConfig(str(flat), str(tok), str(labels), n_samples=100, max_new_tokens=48, bootstrap=0, seed=3)
    m = zeroshot(cfg, tmp_path / "zs")
    pred = pl.read_parquet(tmp_path / "zs" / "predictions.parquet")
    assert pred.height == 20 and pred.columns == PREDICTION_COLUMNS  # the held_out rows scored, nothing else
    # 20 labels x 100 samples, ~67 decided each: sd of the mean share ~ 0.014; no event after 48 draws ~ (9/12)^48
    assert abs(pred["predicted_boolean_probability"].mean() - 1 / 2) < 0.045
    assert abs(m["undecided_share"] - 1 / 3) < 0.04 and m["undecided_share"] - m["end_of_record_share"] < 0.01
    # seeded: the same labels give the same probabilities
    small = ZeroShotConfig(str(flat), str(tok), str(labels), n_samples=20, max_new_tokens=48, bootstrap=0, seed=3, max_labels=6)
    a, b = zeroshot(small, tmp_path / "zs_a"), zeroshot(small, tmp_path / "zs_b")
    pa_, pb_ = (pl.read_parquet(tmp_path / d / "predictions.parquet")["predicted_boolean_probability"] for d in ("zs_a", "zs_b"))
    assert pa_.len() == 6 and pa_.equals(pb_) and a["n"] == b["n"] == 6
    # ...whatever the batching: one label per batch or all six together
    for bs, name in ((1, "zs_c"), (6 * 20, "zs_d")):
        zeroshot(ZeroShotConfig(**{**small.__dict__, "batch_size": bs}), tmp_path / name)
        assert pl.read_parquet(tmp_path / name / "predictions.parquet")["predicted_boolean_probability"].equals(pa_)
    # ...and whatever else the label file holds: its held-out labels alone, in reverse order, give each label the
    # same probability (seeded by the label, not by its row in the file: other labels moved every later one's seed)
    key = ["subject_id", "prediction_time"]
    full = ZeroShotConfig(**{**small.__dict__, "max_labels": None})
    zeroshot(full, tmp_path / "zs_full")
    pf = pl.read_parquet(tmp_path / "zs_full" / "predictions.parquet")
    held = pl.read_parquet(labels).join(pf.select(key), on=key, how="semi").reverse()
    assert held.height == 20 < pl.read_parquet(labels).height
    (tmp_path / "held").mkdir()
    held.write_parquet(tmp_path / "held" / Path(labels).name)  # the file's name says its task, as ACES names them
    zeroshot(ZeroShotConfig(**{**full.__dict__, "labels": str(tmp_path / "held" / Path(labels).name)}), tmp_path / "zs_held")
    both = pf.join(pl.read_parquet(tmp_path / "zs_held" / "predictions.parquet"), on=key, suffix="_held")
    assert both.height == 20 and both["predicted_boolean_probability"].n_unique() > 3
    assert both["predicted_boolean_probability"].equals(both["predicted_boolean_probability_held"], check_names=False)
    with pytest.raises(UserError, match="zero-shot supports"):
        zeroshot(ZeroShotConfig(str(flat), str(tok), str(labels), task="sepsis"), tmp_path / "zs3")
    los = tmp_path / "los.parquet"  # not named after another task (the heads refuse mortality labels as long_los)
    los.write_bytes(labels.read_bytes())
    with pytest.raises(UserError, match="lists no interval tokens"):  # time-bound tasks need the tokenizer's intervals
        zeroshot(ZeroShotConfig(str(flat), str(tok), str(los), task="long_los"), tmp_path / "zs4")


def test_probe_embeds_the_same_histories_once_per_pooling(cohort):
    """score_run's memo: a second task on the same histories reuses the representations."""
    from ehrfm.clinical.model_io import load_run
    from ehrfm.clinical.probe import ProbeConfig, load_label_histories, probe_scores
    from ehrfm.tokens import TokenDir

    tok, labels, run = cohort
    td = TokenDir(tok)
    h = load_label_histories(td, labels, None, 0)
    model, _ = load_run(run, td)
    cfg = ProbeConfig(str(run), str(tok), str(labels))
    features: dict = {}
    p1, _ = probe_scores(model, td, h, 64, cfg, "in_hospital_mortality", features)
    p2, _ = probe_scores(model, td, h, 64, cfg, "long_los", features)
    assert len(features) == 1 and np.array_equal(p1, p2)
    (x,) = features.values()
    assert x.shape == (len(h.start), 3 * model.config.d_model * (model.config.n_layer + 1))  # the default: every depth's last, mean, max
    probe_scores(model, td, h, 64, ProbeConfig(str(run), str(tok), str(labels), pooling="last"), "long_los", features)
    probe_scores(model, td, h, 32, cfg, "long_los", features)
    assert len(features) == 3  # another pooling or context is another representation
    with pytest.raises(UserError, match="pooling 'max'"):
        probe_scores(model, td, h, 64, ProbeConfig(str(run), str(tok), str(labels), pooling="max"), "long_los")


def _cli(capsys, *argv) -> tuple[int, str]:
    """(exit status, stderr) of `ehrfm argv...` run in this process."""
    from ehrfm.app.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def test_heads_refuse_a_label_dir_of_several_tasks_and_a_task_mismatch(cohort, tmp_path, capsys):
    """Before: --labels DIR read every parquet under DIR as one task (mortality and long stay mixed),
    and zeroshot --task X scored a label file `ehrfm labels` had made for task Y."""
    import shutil

    from ehrfm.clinical.probe import ProbeConfig, probe

    tok, labels, run = cohort
    both = tmp_path / "labels"
    both.mkdir()
    for task in ("in_hospital_mortality", "long_los"):  # as `ehrfm labels --task all` writes them
        shutil.copy(labels, both / f"{task}.parquet")
        (both / f"{task}.json").write_text(json.dumps({"task": task}))
    head = ["--tokens", tok, "--labels", both, "--out", tmp_path / "o", "--bootstrap", "0"]
    for cmd in (["probe", run], ["finetune", run], ["zeroshot", run, "--task", "in_hospital_mortality"]):
        rc, err = _cli(capsys, *cmd, *head)
        assert rc == 2 and err.count("\n") == 1, err
        assert f"--labels {both} is a directory holding 2 parquet files (in_hospital_mortality.parquet, long_los.parquet)" in err
    rc, err = _cli(capsys, "baseline", tmp_path / "meds", "--labels", both, "--out", tmp_path / "o")
    assert rc == 2 and "holding 2 parquet files" in err, err
    assert not (tmp_path / "o").exists()
    # a directory with one task's file is that file
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(labels, one / "in_hospital_mortality.parquet")
    m = probe(ProbeConfig(str(run), str(tok), str(one), bootstrap=0), tmp_path / "p")
    assert m["task"] == "in_hospital_mortality" and m["n"] == 20
    # the task a label file records (its sidecar) must be the one asked for
    long_los = both / "long_los.parquet"
    rc, err = _cli(capsys, "zeroshot", run, "--tokens", tok, "--labels", long_los, "--out", tmp_path / "z",
                   "--task", "in_hospital_mortality")
    assert rc == 2 and err.count("\n") == 1, err
    assert f"label file {long_los} holds labels of task long_los" in err and "not in_hospital_mortality" in err
    with pytest.raises(UserError, match="holds labels of task long_los"):
        probe(ProbeConfig(str(run), str(tok), str(long_los), task="in_hospital_mortality"), tmp_path / "p2")
    assert not (tmp_path / "z").exists() and not (tmp_path / "p2").exists()


def test_heads_refuse_an_unfinished_run_unless_allowed(cohort, tmp_path, capsys):
    """Before: a run whose training was interrupted (no result.json, checkpoint state "interrupted")
    was probed as if it were the trained model."""
    import shutil

    from ehrfm.checkpoint import load_model, save_checkpoint

    tok, labels, run = cohort
    part = tmp_path / "part"
    model, _ = load_model(run)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    save_checkpoint(part, model, None, {**state, "status": "interrupted"})
    head = ["--tokens", tok, "--labels", labels, "--bootstrap", "0"]
    for cmd in (["probe", part], ["finetune", part, "--epochs", "1"],
                ["zeroshot", part, "--samples", "1", "--task", "in_hospital_mortality"]):
        rc, err = _cli(capsys, *cmd, *head, "--out", tmp_path / "o")
        assert rc == 2 and err.count("\n") == 1, err
        assert f"run {part} has status 'interrupted' ({part / 'checkpoint' / 'state.json'})" in err
        assert "--allow-incomplete" in err
    rc, err = _cli(capsys, "export", part, "--out", tmp_path / "o", "--tokens", tok)
    assert rc == 2 and "has status 'interrupted'" in err, err
    assert not (tmp_path / "o").exists()
    # diverged or failed (result.json): refused alike
    diverged = tmp_path / "diverged"
    shutil.copytree(run, diverged)
    (diverged / "result.json").write_text(json.dumps({"status": "diverged"}))
    rc, err = _cli(capsys, "probe", diverged, *head, "--out", tmp_path / "o")
    assert rc == 2 and f"run {diverged} has status 'diverged' ({diverged / 'result.json'})" in err, err
    # the user's explicit choice: the last checkpoint is used, and each head's metrics.json says which
    # (before: only config.json's allow_incomplete; finetune and zeroshot named no model at all)
    rc, err = _cli(capsys, "probe", part, *head, "--out", tmp_path / "ok", "--allow-incomplete")
    assert rc == 0, err
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["allow_incomplete"] is True
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())["auroc"] > 0.95
    for cmd in (["probe"], ["finetune", "--epochs", "1"], ["zeroshot", "--samples", "1", "--task", "in_hospital_mortality"]):
        out = tmp_path / f"ok-{cmd[0]}"
        rc, err = _cli(capsys, cmd[0], part, *cmd[1:], *head, "--out", out, "--allow-incomplete")
        assert rc == 0, err
        record = json.loads((out / "metrics.json").read_text())["model"]
        assert (record["status"], record["step"], record["steps"]) == ("interrupted", state["step"], state.get("steps")), cmd
        assert record["run_dir"] == str(part.resolve()) and record["tokens_seen"] == state.get("tokens_seen")
    rc, err = _cli(capsys, "probe", run, *head, "--out", tmp_path / "done")  # a completed run: result.json's status
    assert rc == 0, err
    assert json.loads((tmp_path / "done" / "metrics.json").read_text())["model"]["status"] == "completed"
    # a trainer's run without result.json (stopped in its final eval): its checkpoint says "completed", but the
    # head's record says the run was never measured (it read "completed", as if scored)
    unmeasured = tmp_path / "unmeasured"
    save_checkpoint(unmeasured, model, None, {**state, "status": "completed"})
    (unmeasured / "config.json").write_text("{}")  # what marks a trainer's run dir (the fixture's run has none)
    rc, err = _cli(capsys, "probe", unmeasured, *head, "--out", tmp_path / "unmeasured-probe")
    assert rc == 2 and "its final held-out loss was never measured" in err, err
    rc, err = _cli(capsys, "probe", unmeasured, *head, "--out", tmp_path / "unmeasured-probe", "--allow-incomplete")
    assert rc == 0, err
    assert json.loads((tmp_path / "unmeasured-probe" / "metrics.json").read_text())["model"]["status"] == "unevaluated"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(cohort, tmp_path, capsys):
    """Before: `probe --device cuda` on a CPU-only torch ended in torch's AssertionError traceback."""
    tok, labels, run = cohort
    head = ["--tokens", tok, "--labels", labels, "--out", tmp_path / "o", "--bootstrap", "0"]
    for cmd in (["probe", run], ["finetune", run], ["zeroshot", run, "--samples", "1", "--task", "in_hospital_mortality"]):
        for device, why in (("cuda", "CUDA is not available on this machine"), ("cuda:1", "CUDA is not available"),
                            ("gpu", "is not a torch device")):
            rc, err = _cli(capsys, *cmd, *head, "--device", device)
            assert rc == 2 and err.count("\n") == 1 and why in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_heads_say_when_their_score_means_little(cohort, tmp_path, capsys):
    """Zero-shot rollouts all undecided scored AUROC 0.500 [0.500, 0.500] without a word; a tuning split of one
    class moved the L2 choice to cross-validation on train, said only in metrics.json."""
    import numpy as np

    from ehrfm.clinical.common import fit_logistic

    tok, labels, run = cohort
    head = ["--tokens", tok, "--labels", labels, "--bootstrap", "0"]
    rc, err = _cli(capsys, "zeroshot", run, *head, "--samples", "1", "--max-new-tokens", "1",
                   "--task", "in_hospital_mortality", "--out", tmp_path / "z1")
    share = json.loads((tmp_path / "z1" / "metrics.json").read_text())["undecided_share"]
    assert rc == 0 and share >= 0.5, (err, share)
    assert "of rollouts ended undecided (neither the outcome nor its competing event within 1 new tokens)" in err, err
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), np.r_[np.zeros(30), np.ones(30)].astype(int)
    capsys.readouterr()
    _, record = fit_logistic(x, y, x[:10], np.ones(10, dtype=int), 0, "t")
    assert record["selected_on"].startswith("train 5-fold CV")
    assert "task t: the tuning split's 10 labels are all one class: the L2 strength is chosen by 5-fold" in capsys.readouterr().err
    _, record = fit_logistic(x, y, x[:0], y[:0], 0, "t")  # no tuning labels: said plainly ("0 labels are none")
    assert record["selected_on"].startswith("train 5-fold CV")
    assert "task t: the tuning split has no labels: the L2 strength is chosen by 5-fold" in capsys.readouterr().err
    _, record = fit_logistic(x, y, x, y, 0, "t")
    assert record["selected_on"] == "tuning" and "warning" not in capsys.readouterr().err



def test_finetune_that_diverges_is_refused_not_scored(synth_meds, synth_tokens, tiny_run, tmp_path):
    """--lr 1e9 on a real cohort: a finite train loss of ~1e9 nats, every held-out probability 1.0, was scored as
    AUROC 0.500 [0.500, 0.500] (exit 0). Now it is refused, and nothing is written."""
    from ehrfm.clinical.finetune import DIVERGED_LOSS, FinetuneConfig, finetune
    from ehrfm.clinical.labels import make_labels, write_label_dir
    from ehrfm.errors import UserError

    frame, info = make_labels(synth_meds, "long_los")
    write_label_dir({"long_los": frame}, {"long_los": info}, tmp_path / "labels")
    cfg = dict(run_dir=str(tiny_run), tokens_dir=str(synth_tokens), labels=str(tmp_path / "labels" / "long_los.parquet"),
               bootstrap=0, max_epochs=2, max_labels=150)
    with pytest.raises(UserError, match=r"fine-tuning diverged at epoch 1 \(mean train loss .* nats per label, above 10"):
        finetune(FinetuneConfig(**cfg, lr=1e9), tmp_path / "ft")
    assert not (tmp_path / "ft").exists()
    ok = finetune(FinetuneConfig(**cfg), tmp_path / "ok")
    assert all(e["train_loss"] < DIVERGED_LOSS / 10 for e in ok["epochs"]) and ok["auroc"] > 0.6
