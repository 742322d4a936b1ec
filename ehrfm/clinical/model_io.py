"""A trained run as the heads use it: loading with a tokenizer check, and frozen representations.

Representation of a label, read through at most the last `context` tokens of its history (the
tokens with time <= prediction_time), by `pooling`:
- "last": the final-normed hidden state (GPT.hidden_states) at the history's last token;
- "last+mean": that state beside the mean of the window's states, (2 * d_model,). A small model's
  last state forgets much of a long window; the mean keeps what it saw earlier (mean pooling as in
  Sentence-BERT, Reimers & Gurevych 2019). On the default demo's best model it lifts held_out
  AUROC by 0.006-0.019 on the four tasks (README).
- "last+mean+max": those two beside the feature-wise max of the window's states, (3 * d_model,).
  A mean dilutes a rare event of a long window (one MI among hundreds of lab tokens); the max keeps
  that it happened (max pooling as in InferSent, Conneau et al. 2017). On the default demo's best
  model it lifts tuning AUROC by 0.001-0.008 over last+mean on all four tasks (README).
- "layers" (the default of `ehrfm probe`): last, mean and max of every depth (GPT.layer_states: the
  residual stream entering each block, RMS-normalised, then the final-normed output),
  (3 * d_model * (n_layer + 1),). The last layer of a small model trades features for next-token
  prediction; earlier layers keep them (ELMo, Peters et al. 2018; Tenney et al. 2019). On the default
  demo's best model (2 layers, d_model 48) it lifts held_out AUROC by 0.002-0.006 over last+mean+max
  on all four tasks (README, 2026-12-06).
Histories are batched by similar length and right-padded; attention is causal, so padding after a
row's last token never changes that token's state, and the mean skips the padding.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ehrfm.clinical.configs import LAYERS, POOLINGS
from ehrfm.clinical.histories import Histories, history_window
from ehrfm.errors import UserError
from ehrfm.io import progress
from ehrfm.results import require_completed
from ehrfm.tokens import TokenDir


def _recorded_fingerprint(run_dir: Path) -> str | None:
    """The tokenizer fingerprint a run recorded (checkpoint state, result or config), if any."""
    for rel in ("checkpoint/state.json", "result.json", "config.json"):
        p = run_dir / rel
        if not p.is_file():
            continue
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        for key, value in data.items():
            if "fingerprint" in key and isinstance(value, str) and value:
                return value
    return None


SCORED_SPLITS = ("tuning", "held_out")  # the splits a head selects on or scores


def check_not_pretrained_on(run_dir: str | os.PathLike, td: TokenDir) -> None:
    """Refuse a token dir whose tuning/held_out subjects were in the run's pretraining train split.

    The run's config.json records train.tokens_dir; a head on another token dir (the same MEDS
    split again with another --split-seed, tokenized with the run's tokenizer) would select and
    score on patients whose whole timelines the model was trained on. A subject counts as seen when
    its id is in that train split and, unless both token dirs record the same MEDS dir, its timeline
    starts at the same instant there: another dataset tokenized with the run's tokenizer numbers its
    own patients, and an id alone is no patient. When that dir (or the record) is gone the check
    cannot be made: one warning, no error. Counts only, never ids.

    Raises:
        UserError: some subject of `td`'s tuning or held_out split is in the train split of the run's
            pretraining token dir (the counts per split are given); the run's config.json is damaged
            (not JSON, or its train.tokens_dir not a path).
    """
    from ehrfm.io import read_json, warn_once

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    # A missing config (an exported or hand-made run) leaves the check undone, with a warning; a damaged
    # one is refused: it was read as missing, and the check was silently skipped.
    cfg = read_json(cfg_path, "run config", expect=dict) if cfg_path.exists() else {}
    train = cfg.get("train", {})
    if not isinstance(train, dict):
        raise UserError(f"run config {cfg_path} is damaged: its train entry is a JSON {type(train).__name__}, not an object")
    recorded = train.get("tokens_dir")
    if recorded is not None and not isinstance(recorded, str):
        raise UserError(f"run config {cfg_path} is damaged: its train.tokens_dir is a JSON {type(recorded).__name__}, not a path")
    if not recorded:
        warn_once("run unchecked", str(run_dir), f"run {run_dir}: no train.tokens_dir in {cfg_path}: could not check that the heads' tuning/held_out "
             "subjects were not in the run's pretraining train split")
        return
    pre = Path(recorded)
    if pre.exists() and td.path.exists() and os.path.samefile(pre, td.path):
        # The run's own token dir: its splits are disjoint by construction, unless it was rewritten since (the data
        # re-split and tokenized into the same dir): then the train split the run saw is gone, and with it the check.
        data = cfg.get("data")
        recorded_train = data.get("train_sha256") if isinstance(data, dict) else None
        if isinstance(recorded_train, str) and "train" in td.splits and td.content_digest("train") != recorded_train:
            raise UserError(f"token dir {td.path} was rewritten since run {run_dir} trained on it (its train split's "
                            f"content differs from data.train_sha256 in {cfg_path}): its tuning/held_out subjects may "
                            "have been in the run's train split, which can no longer be checked; score on the data the "
                            "run trained on, or train the model again on this token dir")
        return
    if not (pre / "tokenizer.json").is_file() or not (pre / "train" / "tokens.npy").is_file():
        warn_once("run unchecked", str(run_dir), f"run {run_dir}: its pretraining token dir {pre} (train.tokens_dir in {cfg_path}) is gone or has no train "
             f"split: could not check that token dir {td.path}'s tuning/held_out subjects were not pretrained on")
        return
    pre_td = TokenDir(pre)
    seen = pre_td.split("train")
    # Another dataset tokenized with the run's tokenizer (external validation) numbers its own patients:
    # the default demo's 44,000 synthetic ids span the MIMIC-IV demo's, whose held_out was refused as
    # "seen". Unless both token dirs come from one MEDS dir, a subject is the same patient only when its
    # timeline also starts at the same instant (the same data re-split keeps every time).
    same_meds = (pre_td.meds_dir is not None and td.meds_dir is not None and pre_td.meds_dir.exists()
                 and td.meds_dir.exists() and os.path.samefile(pre_td.meds_dir, td.meds_dir))
    overlaps = []
    for name in SCORED_SPLITS:
        if name in td.splits:
            sp = td.split(name)
            _, i_seen, i_sp = np.intersect1d(seen.subject_ids, sp.subject_ids, return_indices=True)
            if same_meds:
                n = len(i_sp)
            else:  # a timeline's first token (TIMELINE_START) has the time of its first event
                both = (seen.lengths[i_seen] > 0) & (sp.lengths[i_sp] > 0)
                i_seen, i_sp = i_seen[both], i_sp[both]
                n = int((seen.times[seen.offsets[i_seen]] == sp.times[sp.offsets[i_sp]]).sum())
            if n:
                overlaps.append(f"{n} of {len(sp.subject_ids)} {name}")
    if overlaps:
        raise UserError(f"token dir {td.path}: {' and '.join(overlaps)} subjects were in the train split of the run's "
                        f"pretraining token dir {pre} (train.tokens_dir in {cfg_path}): the model has seen their "
                        "timelines, so a head tuned or scored on them would be optimistic; use a token dir with the "
                        "run's own split (the MEDS data split as it was when the run's token dir was made)")


def load_run(run_dir: str | os.PathLike, td: TokenDir, device: str = "cpu", n_labels: int | None = None,
             allow_incomplete: bool = False, with_record: bool = False):
    """(model, ModelConfig) of a completed run, refusing a run trained on another tokenizer.

    With `with_record`, a third item: the head's metrics.json "model" section (model_record) of the
    checkpoint loaded: its run dir, shape, status, step of steps and tokens seen.

    UserError: a run that did not complete (unless `allow_incomplete`; results.require_completed),
    a device this machine lacks (checkpoint.check_device), a damaged checkpoint, a vocab mismatch,
    a token dir whose tuning/held_out subjects the run was pretrained on (check_not_pretrained_on).
    """
    from ehrfm.checkpoint import load_model
    from ehrfm.io import check_not_temporary

    check_not_temporary(run_dir, "run dir")
    run_dir = Path(run_dir)
    require_completed(run_dir, "a clinical head", allow_incomplete)
    model, cfg, state = load_model(run_dir, device, with_state=True)
    affected = f"; all {n_labels} label rows affected" if n_labels is not None else ""
    recorded = _recorded_fingerprint(run_dir)
    if recorded is not None and recorded != td.fingerprint:
        raise UserError(
            f"vocab mismatch: run {run_dir} was trained on tokenizer {recorded[:12]} but token dir {td.path} has tokenizer "
            f"{td.fingerprint[:12]} (vocab {td.vocab_size}){affected}; tokenize with --tokenizer RUN_TOKENS/tokenizer.json"
        )
    if cfg.vocab_size != td.vocab_size:
        raise UserError(
            f"vocab mismatch: run {run_dir} has vocab size {cfg.vocab_size} but token dir {td.path} has {td.vocab_size}{affected}"
        )
    for split in td.splits:  # every id the heads feed the model must be in its vocab (read once per TokenDir)
        td.check_token_ids(split, trust_stats=False)
    check_not_pretrained_on(run_dir, td)  # after the token dir's own checks: a damaged dir is named first
    if with_record:
        from ehrfm.results import run_provenance

        return model, cfg, model_record(run_provenance(run_dir, state), cfg)
    return model, cfg


def model_record(provenance: dict, cfg) -> dict:
    """A head's metrics.json "model" section: the run's provenance (results.run_provenance) and its shape."""
    return {"run_dir": provenance["run"], "n_layer": cfg.n_layer, "d_model": cfg.d_model, "context": cfg.context,
            **{k: v for k, v in provenance.items() if k != "run"}}


def pad_id(td: TokenDir) -> int:
    """The token dir's PAD id, or 0 when it has no PAD token."""
    try:
        return td.pad_id
    except KeyError:
        return 0


PAD_MULTIPLE = 64
"""A history's window is padded to the next multiple of this many tokens (at most the context), set by its own
length alone: its representation is then the same whatever batch it shares, bit for bit on CPU. Padded to its
batch's longest window instead, a history's states moved by ~1e-6 with --batch-size, which flipped the probe's
choice of C between near-tied tuning AUROCs (held-out AUROC 0.909 at --batch-size 64, 0.905 at 9)."""


def padded_lengths(lengths: np.ndarray, context: int) -> np.ndarray:
    """(n,) the padded length of each window of `lengths` tokens (PAD_MULTIPLE, at most `context`)."""
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    return np.minimum(-(-lengths // PAD_MULTIPLE) * PAD_MULTIPLE, max(int(context), 1))


def batches_by_length(lengths: np.ndarray, batch_size: int, context: int):
    """Index batches of windows of one padded length (padded_lengths), shortest first, in a fixed order.

    `lengths`: (n,) window lengths in tokens, at most `context`; at most `batch_size` indices a batch.
    """
    order = np.argsort(lengths, kind="stable")
    padded = padded_lengths(np.asarray(lengths)[order], context)
    edges = np.flatnonzero(np.diff(padded)) + 1  # where the padded length changes
    for start, stop in zip(np.r_[0, edges], np.r_[edges, len(order)], strict=True):
        for i in range(start, stop, batch_size):
            yield order[i : min(i + batch_size, stop)]


def padded_batch(td: TokenDir, h: Histories, idx: np.ndarray, context: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) right-padded token ids of the labels idx, and the position of each row's last token.

    T is the padded length (padded_lengths) of the longest window: for a batch from batches_by_length,
    every row's own padded length.
    """
    windows = [history_window(td, h, int(k), context) for k in idx]
    T = int(padded_lengths(np.array([max(len(w) for w in windows)]), context)[0])
    x = np.full((len(windows), T), pad_id(td), dtype=np.int64)
    for r, w in enumerate(windows):
        x[r, : len(w)] = w
    last = np.array([len(w) - 1 for w in windows], dtype=np.int64)
    return torch.from_numpy(x).to(device), torch.from_numpy(last).to(device)


def representation_width(pooling: str, n_layer: int, d_model: int) -> int:
    """How many numbers `embed_histories` gives per label with `pooling` (ValueError: an unknown pooling)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
    if pooling == LAYERS:
        return 3 * d_model * (n_layer + 1)
    return len(pooling.split("+")) * d_model


@torch.no_grad()
def embed_histories(model, td: TokenDir, h: Histories, context: int, batch_size: int = 64, device="cpu", desc="embed",
                    pooling: str = "last") -> np.ndarray:
    """Float32 representations at the prediction times (see module doc).

    Returns (n_labels, d_model) with pooling "last", (n_labels, 2 * d_model) with "last+mean",
    (n_labels, 3 * d_model) with "last+mean+max" (in that order: last, mean, max), and
    (n_labels, 3 * d_model * (n_layer + 1)) with "layers" (last, mean, max of each depth of
    GPT.layer_states, the embeddings first, the final-normed output last). ValueError: an
    unknown pooling.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
    model.eval()
    device = torch.device(device)
    n = len(h.start)
    d = model.config.d_model
    every_layer = pooling == LAYERS
    kinds = ("last", "mean", "max") if every_layer else tuple(pooling.split("+"))
    width = len(kinds) * d  # per depth
    out = np.zeros((n, representation_width(pooling, model.config.n_layer, d)), dtype=np.float32)
    use_bf16 = device.type == "cuda"
    with progress(total=n, desc=desc, unit="label") as bar:
        for idx in batches_by_length(np.minimum(h.lengths(), context), batch_size, context):
            x, last = padded_batch(td, h, idx, context, device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                states = model.layer_states(x) if every_layer else [model.hidden_states(x)]
            rows = torch.arange(len(idx), device=device)
            real = torch.arange(x.shape[1], device=device)[None, :] <= last[:, None]  # (B, T): not padding
            for j, hs in enumerate(states):
                for k, kind in enumerate(kinds):
                    at = j * width + k * d
                    out[idx, at : at + d] = _pooled(hs.float(), kind, rows, last, real).cpu().numpy()
            bar.update(len(idx))
    return out


def _pooled(hs: torch.Tensor, kind: str, rows: torch.Tensor, last: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, d) of states hs (B, T, d): the state at each row's `last` token, or the mean or max over its `real` positions."""
    if kind == "last":
        return hs[rows, last]
    if kind == "mean":
        return (hs * real[..., None]).sum(1) / real.sum(1, keepdim=True)
    return hs.masked_fill(~real[..., None], -torch.inf).amax(1)


def resolve_context(requested: int | None, model_context: int) -> int:
    """The context (tokens) a head reads: `requested`, or the model's context when None.

    Raises:
        UserError: `requested` is below 1 or above the model's context.
    """
    if requested is None:
        return model_context
    if requested < 1 or requested > model_context:
        raise UserError(f"--context {requested} must be between 1 and the model's context {model_context}")
    return requested
