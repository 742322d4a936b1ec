"""Zero-shot rollouts (ehrfm.clinical.zeroshot): the sliding KV cache against full recompute,
rollouts that stop exactly at the first outcome / competing token or time bound (checked draw by
draw against the seeded generator), rollouts longer than the context, and the undecided rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ehrfm.config import ModelConfig
from ehrfm.model import GPT

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DAY = 24 * 3_600_000_000


def random_gpt(n_layer: int, context: int, vocab: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(n_layer=n_layer, d_model=32, n_head=2, context=context, vocab_size=vocab)).eval()


def test_sliding_cache_gives_the_window_logits():
    """A 1-layer model's cached keys/values depend only on token and position, so after each slide
    the next-token logits must equal a full forward of the last `context` tokens."""
    from ehrfm.clinical.zeroshot import slide_cache

    C = 16
    model = random_gpt(1, C, 50)
    seq = torch.randint(0, 50, (3, 3 * C), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = model.new_cache(3)
        logits = model.forward_step(seq[:, :C], cache)[:, -1]
        for t in range(C, 3 * C):
            assert cache.length == C
            slide_cache(model, cache, 1)
            logits = model.forward_step(seq[:, t : t + 1], cache)[:, -1]
            ref = model(seq[:, t - C + 1 : t + 1])[0][:, -1]
            torch.testing.assert_close(logits, ref, atol=2e-5, rtol=1e-4)
        # deeper models: layer 0 of the slid cache is exactly a fresh prefill of the window
        deep = random_gpt(2, C, 50)
        slid, fresh = deep.new_cache(3), deep.new_cache(3)
        deep.forward_step(seq[:, :C], slid)
        slide_cache(deep, slid, 5)
        deep.forward_step(seq[:, 5:C], fresh)
        assert slid.length == fresh.length == C - 5
        torch.testing.assert_close(slid.k[0, :, :, : C - 5], fresh.k[0, :, :, : C - 5], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(slid.v[0, :, :, : C - 5], fresh.v[0, :, :, : C - 5])
        with pytest.raises(ValueError, match="cannot drop"):
            slide_cache(deep, slid, C)


def test_left_padded_rows_decode_as_they_would_alone():
    """Prompts of different lengths share one batch: masked left padding gives each row the
    logits it gets alone, through prefill, decoding and slides of the window."""
    from ehrfm.clinical.zeroshot import slide_cache

    C = 16
    model = random_gpt(2, C, 50)
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(1, 50, (n,), generator=g) for n in (16, 9, 3)]
    cont = torch.randint(1, 50, (3, 20), generator=g)
    pad = torch.tensor([C - len(r) for r in rows])
    batch = torch.stack([torch.cat([torch.zeros(C - len(r), dtype=torch.long), r]) for r in rows])
    with torch.no_grad():
        cache = model.new_cache(3)
        got = [model.forward_step(batch, cache, pad=pad)[:, -1]]
        # the prefill of a rollout asks for the last position alone: the same logits, (B, 1, V)
        last = model.forward_step(batch, model.new_cache(3), pad=pad, last_only=True)
        assert last.shape == (3, 1, 50)
        torch.testing.assert_close(last[:, -1], got[0])
        for t in range(cont.shape[1]):
            slide_cache(model, cache, 1)
            pad = (pad - 1).clamp(min=0)
            got.append(model.forward_step(cont[:, t : t + 1], cache, pad=pad)[:, -1])
        for j, r in enumerate(rows):
            alone = model.new_cache(1)
            want = [model.forward_step(r[None], alone)[:, -1]]
            for t in range(cont.shape[1]):
                if alone.length == C:
                    slide_cache(model, alone, 1)
                want.append(model.forward_step(cont[j : j + 1, t : t + 1], alone)[:, -1])
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(a[j : j + 1], b, atol=3e-5, rtol=1e-4)


def uniform_gpt(context: int, vocab: int) -> GPT:
    """All logits 0: Gumbel-max sampling picks argmax(u) of the seeded uniforms."""
    model = random_gpt(2, context, vocab)
    with torch.no_grad():
        model.head.weight.zero_()
    return model


def reference_counts(seed: int, S: int, V: int, max_new: int, decide) -> tuple[int, int, int, int]:
    """Replays a label's draws: (outcome, competing, undecided, tokens) from decide(row tokens)."""
    g = torch.Generator().manual_seed(seed)
    draws = torch.stack([torch.rand((S, V), generator=g) for _ in range(max_new)], 1).argmax(-1).numpy()  # (S, max_new)
    counts = [0, 0, 0, 0]
    for row in draws:
        verdict, n = decide(row)
        counts[{1: 0, -1: 1, 0: 2}[verdict]] += 1
        counts[3] += n
    return tuple(counts)


def first_token(out, comp):
    def decide(row):
        for i, t in enumerate(row):
            if t in out:
                return 1, i + 1
            if t in comp:
                return -1, i + 1
        return 0, len(row)
    return decide


@pytest.mark.parametrize("cross", [None, "outcome", "competing"])
def test_rollouts_stop_at_the_first_outcome_competing_token_or_time_bound(cross):
    """A uniform model over 300 tokens, a full 32-token context: rollouts run ~100 tokens, slide,
    and stop exactly where the seeded draws first hit an outcome or competing token (or cross the
    time bound: token 9 is 10 days, the bound 30 days, so the 4th token 9 crosses it)."""
    from ehrfm.clinical.zeroshot import RolloutSpec, rollout_batch

    V, C, S, max_new = 300, 32, 8, 256
    model = uniform_gpt(C, V)
    durations = np.zeros(V)
    durations[9] = 10 * DAY
    spec = RolloutSpec("t", [5], [6, 7], cross, None if cross is None else durations)
    prompts = np.random.default_rng(0).integers(0, V, (3, C))
    seeds = [11, 12, 13]
    limits = np.full(3, 30.0 * DAY)
    with torch.no_grad():
        r = rollout_batch(model, list(prompts), seeds, spec, limits, S, max_new, 1.0, torch.device("cpu"))
        alone = rollout_batch(model, list(prompts[1:2]), seeds[1:2], spec, limits[1:2], S, max_new, 1.0, torch.device("cpu"))

    def decide(row):
        elapsed = 0
        for i, t in enumerate(row):
            elapsed += durations[t] if cross else 0
            crossed = elapsed > 30 * DAY
            if cross == "outcome" and (crossed or t == 5):
                return 1, i + 1
            if cross == "competing" and crossed:
                return -1, i + 1
            if t == 5:
                return 1, i + 1
            if t in (6, 7):
                return -1, i + 1
        return 0, len(row)

    got = [(int(r.outcome[j]), int(r.competing[j]), int(r.undecided[j]), int(r.tokens[j])) for j in range(3)]
    assert got == [reference_counts(s, S, V, max_new, decide) for s in seeds]
    assert (r.outcome + r.competing + r.undecided == S).all()
    assert r.tokens.sum() / (3 * S) > C  # rollouts longer than the context: the window slid
    # a label's rollouts depend on its seed only, not on the labels sharing its batch
    assert (alone.outcome[0], alone.competing[0], alone.tokens[0]) == (r.outcome[1], r.competing[1], r.tokens[1])


def test_uniform_rollouts_past_the_context_give_the_analytic_share():
    """Outcome 1 token, competing 2, of 300: the share is 1/3 however long the rollouts run."""
    from ehrfm.clinical.zeroshot import RolloutSpec, rollout_batch, rollout_probabilities

    V, C, S = 300, 32, 50
    model = uniform_gpt(C, V)
    prompts = np.random.default_rng(1).integers(0, V, (8, C))
    with torch.no_grad():
        r = rollout_batch(model, list(prompts), list(range(8)), RolloutSpec("t", [5], [6, 7]), np.full(8, np.inf), S, 8 * C,
                          1.0, torch.device("cpu"))
    p, none = rollout_probabilities(r.outcome, r.competing, r.undecided, "exclude")
    assert none == 0 and abs(p.mean() - 1 / 3) < 0.06  # 400 rollouts, ~370 decided: sd ~0.025
    # undecided after 256 draws: (297/300)^256 = 0.076; mean length (1 - 0.076) / 0.01 = 92 tokens
    assert 0.04 < r.undecided.sum() / (8 * S) < 0.12
    assert 75 < r.tokens.sum() / (8 * S) < 110


def test_undecided_rules():
    from ehrfm.clinical.zeroshot import rollout_probabilities

    out, comp, und = np.array([2, 0, 0, 3]), np.array([2, 1, 0, 0]), np.array([6, 9, 10, 7])
    p, none = rollout_probabilities(out, comp, und, "exclude")
    # decided shares 2/4, 0/1, none (-> the pooled share 5/8), 3/3
    np.testing.assert_allclose(p, [0.5, 0.0, 5 / 8, 1.0])
    assert none == 1
    p, none = rollout_probabilities(out, comp, und, "negative")
    np.testing.assert_allclose(p, [0.2, 0.0, 0.0, 0.3])
    assert none == 0


def test_time_limits_follow_the_label_definitions(tmp_path):
    """Bounds in us after the prediction time, where simulated time starts (the span since the last
    history event has passed): whatever that span, the window left is the same."""
    import json

    from ehrfm.clinical.zeroshot import label_options, time_limits, transfer_limits

    opts = label_options(tmp_path / "none.parquet")
    assert opts["source"] == "defaults of `ehrfm labels`" and opts["long_los_days"] == 7.0
    # long stay: admission = prediction - 24 h; bound = admission + 7 d, 6 d after the prediction time
    np.testing.assert_allclose(time_limits("long_los", 2, opts), [6 * DAY, 6 * DAY])
    np.testing.assert_allclose(time_limits("readmission_30d", 2, opts), [30 * DAY, 30 * DAY])
    assert np.isinf(time_limits("in_hospital_mortality", 2, opts)).all()
    np.testing.assert_allclose(transfer_limits("readmission_30d", 1, opts), [3_600_000_000])
    assert transfer_limits("icu_admission", 1, opts)[0] == np.nextafter(5 * 60_000_000.0, 0)  # strictly before 5 min
    (tmp_path / "los.json").write_text(json.dumps({"config": {"gap_hours": 48.0, "long_los_days": 3.0, "readmission_days": 7.0}}))
    opts = label_options(tmp_path / "los.parquet")
    assert opts["source"].endswith("los.json")
    np.testing.assert_allclose(time_limits("long_los", 1, opts), [DAY])


def test_task_tokens_on_a_real_token_dir(synth_tokens):
    """Every task's events exist in the tokenizer's vocabulary; interval tokens count as their
    mean gap in train, which lies inside their bin."""
    from ehrfm.clinical.zeroshot import interval_durations, rollout_spec
    from ehrfm.tokens import TokenDir

    td = TokenDir(synth_tokens)
    names = lambda ids: set(td.decode(ids))  # noqa: E731
    m = rollout_spec(td, "in_hospital_mortality")
    assert "MEDS_DEATH" in names(m.outcome) and m.cross is None
    assert all(n.startswith("HOSPITAL_DISCHARGE//") and n != "HOSPITAL_DISCHARGE//DIED" for n in names(m.competing))
    icu = rollout_spec(td, "icu_admission")
    assert all(n.startswith("ICU_ADMISSION//") for n in names(icu.outcome)) and "MEDS_DEATH" in names(icu.competing)
    los = rollout_spec(td, "long_los")
    assert los.outcome == [] and los.cross == "outcome" and "MEDS_DEATH" not in names(los.competing)
    # the end of the record is no end of the stay: undecided, never competing...
    for spec in (m, icu, los):
        assert names(spec.ends) == {"TIMELINE_END"} and "TIMELINE_END" not in names(spec.competing), spec.task
    # ...except for readmission, whose label calls "no later admission in the data" a negative
    re = rollout_spec(td, "readmission_30d")
    assert all(n.startswith("HOSPITAL_ADMISSION//") for n in names(re.outcome)) and re.cross == "competing"
    assert names(re.competing) == {"MEDS_DEATH", "TIMELINE_END"} and re.ends == []
    dur = interval_durations(td)
    bins = td.tokenizer["interval_tokens"]
    for b, nxt in zip(bins, bins[1:] + [None], strict=True):
        d = dur[td.token_id(b["token"])]
        assert b["min_us"] <= d and (nxt is None or d < nxt["min_us"]), (b["token"], d)
    assert (dur > 0).sum() == len(bins)


def replay(spec, tokens: np.ndarray, elapsed: np.ndarray, limit: float) -> int:
    """The rollout rule applied to a real continuation with its real times: 1 outcome, -1 competing, 0 neither."""
    out, comp = set(spec.outcome), set(spec.competing)
    for t, e in zip(tokens.tolist(), elapsed.tolist(), strict=True):
        crossed = spec.cross is not None and e > limit
        if spec.cross == "outcome" and (crossed or t in out):
            return 1
        if spec.cross == "competing" and crossed:
            return -1
        if t in out:
            return 1
        if t in comp:
            return -1
    return 0


def test_rollout_rules_applied_to_the_real_future_reproduce_every_label(synth_meds, synth_tokens, tmp_path):
    """The outcome / competing / time-bound rule of each task, run over each subject's real tokens
    after the prediction time, decides every label and agrees with it: the rollout asks the model
    exactly the question the label answers."""
    from ehrfm.clinical.labels import make_labels, write_label_dir
    from ehrfm.clinical.probe import load_label_histories
    from ehrfm.clinical.zeroshot import ZEROSHOT_TASKS, label_options, rollout_spec, time_limits
    from ehrfm.tokens import TokenDir

    labels, info = make_labels(synth_meds, "all")
    write_label_dir(labels, info, tmp_path / "labels")
    td = TokenDir(synth_tokens)
    for task in ZEROSHOT_TASKS:
        path = tmp_path / "labels" / f"{task}.parquet"
        h = load_label_histories(td, path, 300, 0)
        spec, opts = rollout_spec(td, task), label_options(path)
        assert opts["source"].endswith(f"{task}.json")
        pred = h.labels["prediction_time"].dt.epoch("us").to_numpy()
        verdicts, unk_before = [], []
        for k in range(len(h.start)):
            sp = td.split(h.split[k])
            i = np.searchsorted(sp.offsets, h.start[k], side="right") - 1
            end = int(sp.offsets[i] + sp.lengths[i])
            limit = time_limits(task, 1, opts)[0]
            future = np.asarray(sp.tokens[h.stop[k] : end]).astype(np.int64)
            # simulated time starts at the prediction time (the quiet span since the last event has passed)
            verdicts.append(replay(spec, future, np.asarray(sp.times[h.stop[k] : end]) - pred[k], limit))
            stay_end = np.flatnonzero(np.isin(future, spec.competing))
            unk_before.append(td.token_id("UNK") in future[: stay_end[0] if len(stay_end) else len(future)])
        verdicts, wrong = np.array(verdicts), (np.array(verdicts) == 1) != (h.y == 1)
        assert len(verdicts) > 100 and h.y.sum() > 0, task
        assert (verdicts != 0).all(), task
        if task == "icu_admission":
            # An ICU admission to a care unit too rare for the vocabulary (and its pooled ancestor) is UNK in
            # the tokens: that outcome cannot be seen, by the rule or by a model. Only such stays may differ.
            assert (h.y[wrong] == 1).all() and np.array(unk_before)[wrong].all() and wrong.mean() < 0.05, task
        else:
            assert not wrong.any(), (task, int(wrong.sum()))


def test_a_rollout_context_below_the_models_bounds_its_window(monkeypatch):
    """A review helper: `zeroshot --context 16` on a 128-context model cut only the prompt; the KV cache
    grew to 128 positions before it slid, while metrics.json said 16 (a context ablation, silently invalid).
    Now the cache holds at most `context` positions, and the rollout equals the same model's rollouts
    within the window: the logits of a window-sized model reading the same tokens."""
    from ehrfm.clinical.zeroshot import RolloutSpec, rollout_batch

    C, W, V, S = 32, 8, 40, 3
    model = random_gpt(1, C, V)
    seen = []
    step = GPT.forward_step

    def recording(self, idx, cache, *args, **kwargs):
        out = step(self, idx, cache, *args, **kwargs)
        seen.append(cache.length)
        return out

    monkeypatch.setattr(GPT, "forward_step", recording)
    prompts = [np.random.default_rng(3).integers(0, V, W)]
    spec = RolloutSpec("t", [V - 1], [V - 2])  # rarely drawn: rollouts run long past the window
    with torch.no_grad():
        r = rollout_batch(model, prompts, [0], spec, np.full(1, np.inf), S, 4 * C, 1.0, torch.device("cpu"), context=W)
        assert max(seen) == W and r.tokens.sum() > S * W
        seen.clear()
        rollout_batch(model, prompts, [0], spec, np.full(1, np.inf), S, 4 * C, 1.0, torch.device("cpu"))
        assert max(seen) == C  # the model's context by default
        with pytest.raises(ValueError, match="longer than the rollout's context 4"):
            rollout_batch(model, prompts, [0], spec, np.full(1, np.inf), S, 4, 1.0, torch.device("cpu"), context=4)
