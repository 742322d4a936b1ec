"""The zero-shot rollout decides each future by the rule its label uses (ehrfm/clinical/labels.py).

A scripted model samples a given continuation, so each test drives `rollout_batch` through one
future whose label rule and old rollout rule disagree; each failed on the code before its fix.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pytest
import torch
from test_heads import VOCAB, timeline, write_token_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")
H = 3_600_000_000  # us per hour


class _Cache:
    def __init__(self, rows):
        self.k = torch.zeros(1, rows, 1)
        self.v = torch.zeros(1, rows, 1)
        self.length, self.max_len = 0, 1 << 20  # never slides


class ScriptedModel:
    """Samples `script` token by token, whatever the prompt (logit 1e4 on the scripted token)."""

    def __init__(self, script: list[int], vocab_size: int):
        self.script, self.V, self.step = script, vocab_size, 0

    def new_cache(self, rows, max_len=None):  # the scripted rollouts never slide, whatever the context
        return _Cache(rows)

    def forward_step(self, idx, cache, pad=None, last_only=False):
        B = idx.shape[0]
        logits = torch.zeros(B, 1, self.V)
        if self.step < len(self.script):
            logits[:, :, self.script[self.step]] = 1e4
        self.step += 1
        return logits


def token_dir(tmp_path, extra=()):
    """A token dir with interval tokens (1h-2h: 1 h) and the vocabulary VOCAB + extra."""
    vocab = VOCAB + list(extra)
    tok = write_token_dir(tmp_path / "tok", {"train": [timeline(s, s % 2 == 0) for s in range(1, 9)]}, vocab)
    tz = json.loads((tok / "tokenizer.json").read_text())
    tz["interval_tokens"] = [{"token": "1h-2h", "min_us": H}]
    (tok / "tokenizer.json").write_text(json.dumps(tz))
    return tok


def decide(td, task, script: list[str], limit=np.inf, transfer=-np.inf, wait=1.0 * H, max_new=None, origin=None):
    """(outcome, competing, undecided, transferred, unconfirmed) of one rollout sampling `script` (token names)."""
    from ehrfm.clinical.zeroshot import rollout_batch, rollout_spec

    spec = rollout_spec(td, task)
    ids = [td.token_id(t) for t in script]
    model = ScriptedModel(ids, td.vocab_size)
    kw = {} if origin is None else {"origins": np.array([origin], dtype=np.int64)}
    r = rollout_batch(model, [np.array([td.token_id("LAB//A")])], [0], spec, np.array([limit]), 1, max_new or len(ids),
                      1.0, torch.device("cpu"), 0, np.array([transfer]), waits=np.array([wait]), **kw)
    return int(r.outcome[0]), int(r.competing[0]), int(r.undecided[0]), int(r.transferred[0]), int(r.unconfirmed[0])


# 1 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task, limit, transfer", [("icu_admission", np.inf, 5 * 60e6 - 1), ("long_los", 0.5 * H, -np.inf)])
def test_an_outcome_is_followed_to_its_stays_discharge_and_transfer_window(tmp_path, task, limit, transfer):
    """Before: a rollout stopped at its outcome (an ICU admission, the long stay's bound passing), though
    `ehrfm labels` excludes a stay whose discharge the next admission follows within --transfer-hours
    (transferred) whatever its outcome: a future with no label counted as a positive. Now the outcome is
    followed to the stay's end: a discharge then an admission within the window is a transfer; the window
    passing, a death or an end after the discharge confirm the outcome; an end of record before any
    discharge leaves the stay open (no_discharge: undecided)."""
    from ehrfm.tokens import TokenDir

    td = TokenDir(token_dir(tmp_path))
    reach = ["1h-2h", "ICU_ADMISSION//MICU"] if task == "icu_admission" else ["1h-2h"]
    dis, adm = "HOSPITAL_DISCHARGE//HOME", "HOSPITAL_ADMISSION//EW"
    # discharge, admission 0 h later: transferred (before: the outcome)
    assert decide(td, task, reach + ["LAB//B", dis, adm], limit, transfer) == (0, 0, 0, 1, 0)
    # the window passes: the outcome
    assert decide(td, task, reach + [dis, "1h-2h", "1h-2h"], limit, transfer) == (1, 0, 0, 0, 0)
    # a death while the stay runs: no admission can follow, the outcome
    assert decide(td, task, reach + ["MEDS_DEATH"], limit, transfer) == (1, 0, 0, 0, 0)
    # the record ends with the stay open: undecided (as no_discharge)
    assert decide(td, task, reach + ["TIMELINE_END"], limit, transfer) == (0, 0, 1, 0, 0)
    # still running at max_new_tokens: counted as the outcome, and as unconfirmed
    assert decide(td, task, reach + ["LAB//B", "LAB//C"], limit, transfer) == (1, 0, 0, 0, 1)
    # a discharge before the outcome still waits and decides as before
    assert decide(td, task, [dis, "1h-2h", "1h-2h"], limit, transfer) == (0, 1, 0, 0, 0)


# 2 ---------------------------------------------------------------------------------------------
def test_mortality_rollouts_follow_the_labels_day_resolved_death_rule(tmp_path):
    """Before: a sampled MEDS_DEATH was an in-hospital death at once, and a death after any non-DIED
    discharge was a discharge alive, though `ehrfm labels` rules by the day: a date-only death (23:59:59)
    at the time of a date-only discharge to a named place is a death after the discharge (negative), and
    a death later on the day of a discharge that names no live destination (UNK, OTHER) is in hospital.
    Now a death waits while no time passes for a live discharge at its time, and an unknown discharge
    waits to the end of its calendar day (by the prediction time and the sampled intervals) for a death."""
    from ehrfm.tokens import TokenDir

    td = TokenDir(token_dir(tmp_path, ["HOSPITAL_DISCHARGE//UNK", "HOSPITAL_DISCHARGE//DIED"]))
    task, home, unk = "in_hospital_mortality", "HOSPITAL_DISCHARGE//HOME", "HOSPITAL_DISCHARGE//UNK"
    morning = int(datetime(2150, 1, 2, 8, tzinfo=timezone.utc).timestamp() * 1_000_000)  # the prediction time, 08:00
    # death and a live discharge at one time (both dates at 23:59:59): after the discharge (before: in hospital)
    assert decide(td, task, ["MEDS_DEATH", home], origin=morning)[:3] == (0, 1, 0)
    # a death, then a live discharge an hour later: in hospital, as before
    assert decide(td, task, ["MEDS_DEATH", "1h-2h", home], origin=morning)[:3] == (1, 0, 0)
    # a death and an unknown or DIED discharge at its time: in hospital
    assert decide(td, task, ["MEDS_DEATH", unk], origin=morning)[:3] == (1, 0, 0)
    assert decide(td, task, ["MEDS_DEATH", "LAB//B", "HOSPITAL_DISCHARGE//DIED"], origin=morning)[:3] == (1, 0, 0)
    # a discharge to an unknown place at 08:00, a death 3 h later that day: in hospital (before: competing)
    assert decide(td, task, [unk, "1h-2h", "1h-2h", "1h-2h", "MEDS_DEATH"], origin=morning)[:3] == (1, 0, 0)
    # ... the same from 22:00: the death falls on the next day, after the discharge
    late = morning + 14 * H
    assert decide(td, task, [unk, "1h-2h", "1h-2h", "1h-2h", "MEDS_DEATH"], origin=late)[:3] == (0, 1, 0)
    # ... an unknown discharge whose day passes with no death decides, and one followed by an admission
    # within the window is a transfer; a live discharge followed by a death that day is no in-hospital death
    assert decide(td, task, [unk] + ["1h-2h"] * 3, origin=late)[:3] == (0, 1, 0)
    assert decide(td, task, [unk, "HOSPITAL_ADMISSION//EW"], origin=morning)[3] == 1
    assert decide(td, task, [home, "1h-2h", "1h-2h", "MEDS_DEATH"], origin=morning)[:3] == (0, 1, 0)
    # ... a death still waiting at max_new_tokens: in hospital (unconfirmed)
    assert decide(td, task, ["MEDS_DEATH", "LAB//B"], origin=morning) == (1, 0, 0, 0, 1)


# 3 ---------------------------------------------------------------------------------------------
def _peak_bytes(fn) -> int:
    """Peak bytes torch allocates on the CPU while fn runs (the profiler's allocations and frees, in order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    now = peak = 0
    for _, b in events:
        now += b
        peak = max(peak, now)
    return peak


def test_rollout_batches_count_the_prompts_attention_memory(monkeypatch):
    """Before: a batch was sized by each row's KV cache, logits and draws, but encoding its prompts
    also builds (context x context) attention masks per label (GPT.forward_step's boolean causal and
    padding masks, and SDPA's float copy): with context 512 and a one-layer 16-dim model, ~0.9 MiB
    measured per label against a 64 KiB KV cache row, so a 4 MiB budget took 31 labels and their
    encoding allocated ~27 MiB. Now rollout_memory counts the encoding; the allocation torch measures
    for a batch stays within the estimate (and above a quarter of it), and a planned batch within its budget."""
    from ehrfm.clinical import zeroshot as zs
    from ehrfm.config import ModelConfig
    from ehrfm.model import GPT

    torch.manual_seed(0)
    C, V = 512, 32
    model = GPT(ModelConfig(n_layer=1, d_model=16, n_head=4, context=C, vocab_size=V)).eval()
    row, draw, prefill = zs.rollout_memory(model, C)
    spec = zs.RolloutSpec("t", [1], [2])
    rng = np.random.default_rng(0)

    def measured(L, S):
        prompts = [rng.integers(3, V, size=C - j).astype(np.int64) for j in range(L)]  # left-padded: the masked path
        with torch.no_grad():
            return _peak_bytes(lambda: zs.rollout_batch(model, prompts, list(range(L)), spec, np.full(L, np.inf), S, 4, 1.0,
                                                        torch.device("cpu")))

    for L, S in ((1, 2), (3, 2), (2, 8)):
        estimate = L * (prefill + S * (row + draw))
        assert estimate / 4 <= measured(L, S) <= estimate, (L, S)
    budget = 4 << 20
    monkeypatch.setattr(zs, "ROLLOUT_BUDGET_BYTES", budget)
    labels, per = zs.rollout_plan(model, C, 2, None, torch.device("cpu"))
    assert per == 2 and labels >= 1 and measured(labels, 2) <= budget


# 4 ---------------------------------------------------------------------------------------------
class _UniformModel(ScriptedModel):
    def forward_step(self, idx, cache, pad=None, last_only=False):
        return torch.zeros(idx.shape[0], 1, self.V)


@pytest.mark.parametrize("task", ["in_hospital_mortality", "icu_admission", "long_los"])
def test_the_label_rules_give_the_same_counts_alone_batched_and_split(tmp_path, task):
    """The states the rules above keep per row (an outcome followed, a death waiting, an unknown discharge's
    day end, from each label's own prediction time) follow their rows when decided rows leave the batch and
    when a label's samples are split over batches: the counts do not depend on the batch layout."""
    from ehrfm.clinical import zeroshot as zs
    from ehrfm.tokens import TokenDir

    td = TokenDir(token_dir(tmp_path, ["HOSPITAL_DISCHARGE//UNK", "HOSPITAL_DISCHARGE//DIED"]))
    spec, L, S = zs.rollout_spec(td, task), 5, 16
    prompts = [np.full(3 + j, td.token_id("LAB//A")) for j in range(L)]
    opts = {**zs.LABEL_DEFAULTS, "long_los_days": 25 / 24}
    limits, transfers = zs.time_limits(task, L, opts), zs.transfer_limits(task, L, opts)
    origins = int(datetime(2150, 1, 2, 8, tzinfo=timezone.utc).timestamp() * 1_000_000) + 3 * H * np.arange(L)

    def run(j, samples=None):
        return zs.rollout_batch(_UniformModel([], td.vocab_size), prompts[j], list(range(L))[j], spec, limits[j], S, 64, 1.0,
                                torch.device("cpu"), 0, transfers[j], samples=samples, waits=np.full(L, 1.0 * H)[j],
                                origins=origins[j])

    every = slice(None)
    full, alone, parts = run(every), [run(slice(j, j + 1)) for j in range(L)], [run(every, (0, 5)), run(every, (5, S))]
    for f in ("outcome", "competing", "undecided", "transferred", "unconfirmed"):
        counts = getattr(full, f)
        np.testing.assert_array_equal(counts, np.concatenate([getattr(r, f) for r in alone]), err_msg=f)
        np.testing.assert_array_equal(counts, sum(getattr(r, f) for r in parts), err_msg=f)
    assert full.outcome.sum() and full.competing.sum() and full.transferred.sum()


# 4 ---------------------------------------------------------------------------------------------
def test_a_discharge_folded_into_its_familys_root_may_be_a_death(tmp_path):
    """A tokenizer that folded HOSPITAL_DISCHARGE//DIED into HOSPITAL_DISCHARGE//* (its train count under --min-count:
    the MIMIC-IV demo's 14 under 30) wrote every in-hospital death as MEDS_DEATH, HOSPITAL_DISCHARGE//*, which the
    rollout scored as a death after a live discharge: a perfect model's mortality AUROC judged every death a survivor.
    The root now waits as an unknown place (a death that day is in hospital); the tokenizer keeps DIED (and the
    unknown places) as tokens of their own when any train event has one."""
    from ehrfm.clinical.labels import UNKNOWN_DISCHARGE_LOCATIONS
    from ehrfm.tokens import TokenDir
    from tokenization.tokenize import fit_vocab, is_deciding_code

    td = TokenDir(token_dir(tmp_path, ["HOSPITAL_DISCHARGE//*"]))
    task, root, home = "in_hospital_mortality", "HOSPITAL_DISCHARGE//*", "HOSPITAL_DISCHARGE//HOME"
    morning = int(datetime(2150, 1, 2, 8, tzinfo=timezone.utc).timestamp() * 1_000_000)
    for death in (["MEDS_DEATH", root], [root, "MEDS_DEATH"]):  # the data's in-hospital death, in either order
        assert decide(td, task, death, origin=morning)[:3] == (1, 0, 0), death
    assert decide(td, task, ["MEDS_DEATH", home], origin=morning)[:3] == (0, 1, 0)  # a named place is still live
    assert decide(td, task, [root] + ["1h-2h"] * 18, origin=morning)[:3] == (0, 1, 0)  # its day passes: discharged alive
    # the tokenizer: the codes a label or rollout decides by are kept, however rare; other rare places fold
    assert all(is_deciding_code(f"HOSPITAL_DISCHARGE//{p}") for p in UNKNOWN_DISCHARGE_LOCATIONS)
    assert is_deciding_code("HOSPITAL_DISCHARGE// died ") and not is_deciding_code("HOSPITAL_DISCHARGE//HOME")
    counts = {"HOSPITAL_DISCHARGE//HOME": 64, "HOSPITAL_DISCHARGE//DIED": 14, "HOSPITAL_DISCHARGE//UNK": 28,
              "HOSPITAL_DISCHARGE//HOSPICE": 5, "HOSPITAL_DISCHARGE//REHAB": 7}
    heads, _ = fit_vocab(counts, "hierarchical", min_count=30)
    assert heads == {"HOSPITAL_DISCHARGE//HOME": 64, "HOSPITAL_DISCHARGE//DIED": 14, "HOSPITAL_DISCHARGE//UNK": 28,
                     "HOSPITAL_DISCHARGE//*": 12}
    assert fit_vocab(counts, "flat", min_count=30)[0] == {"HOSPITAL_DISCHARGE//HOME": 64}  # DESIGN.md's flat mode
