"""Fine-tuned classification head, optionally with the whole network.

A linear head on the final-normed hidden state at the last history token (the probe's
`--pooling last` representation: the network, trained with --full, produces it), trained with binary cross-entropy and AdamW on train labels. After each epoch
the tuning AUROC is measured (tuning loss when tuning has a single class); training stops after
`patience` epochs without improvement and the best epoch's weights are kept (early stopping).
Head only (default): the frozen representations are computed once and the head is trained on
them. `full=True`: the network is trained too (at `body_lr`), re-reading the histories each step.
Scored on held_out; metrics.json also records the epoch curve.
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np

from ehrfm.clinical.common import as_stored, check_out, require_two_classes, split_predictions, write_head_outputs
from ehrfm.clinical.configs import FinetuneConfig
from ehrfm.clinical.metrics import binary_metrics, format_metrics
from ehrfm.clinical.probe import load_head_inputs
from ehrfm.errors import UserError
from ehrfm.meds_io import SPLITS

DIVERGED_LOSS = 10.0
"""Mean train binary cross-entropy (nats per label) above which fine-tuning has diverged: the prevalence's
constant prediction, where the head starts, scores at most ln 2 = 0.69, and 10 is the true class at p = 4.5e-5."""


def _tuning_score(y: np.ndarray, p: np.ndarray) -> tuple[float, str]:
    """Higher is better: AUROC when tuning has both classes, else minus the log loss."""
    from sklearn.metrics import log_loss, roc_auc_score

    if 0 < y.sum() < len(y):
        return float(roc_auc_score(y, p)), "auroc"
    return -float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])), "neg_log_loss"


def finetune(cfg: FinetuneConfig, out: str | os.PathLike, overwrite: bool = False) -> dict:
    """Fine-tune a classification head (optionally the whole model) on a task; write OUT atomically.

    Early stopping on the tuning AUROC (tuning log loss when tuning has one class), as the module
    docstring describes; scored on held_out.

    Args:
        cfg: the run dir, token dir, labels, task, optimizer and early-stopping settings.
        out: output directory: metrics.json, config.json, predictions*.parquet.
        overwrite: replace `out` if it exists.

    Returns:
        The metrics written to metrics.json: binary_metrics (AUROC, AUPRC with intervals,
        calibration) plus head, split, context, n_train, n_tuning, best_epoch, epochs (the curve)
        and wall_s (seconds).

    Raises:
        UserError: `out` exists without overwrite, the run, token dir or labels cannot serve the task
            (load_head_inputs), a split without labels or train labels of one class.
    """
    import torch

    from ehrfm.clinical.model_io import batches_by_length, padded_batch
    from ehrfm.io import summary

    check_out(out, overwrite, cfg, command="finetune")
    t0 = time.time()
    task, td, h, model, mcfg, context, record = load_head_inputs(cfg)
    device = torch.device(cfg.device)
    y = h.y
    tr, tu, ho = _split_rows(h.split, y, task)
    if not 0 < int(y[tu].sum()) < len(tu):
        from ehrfm.io import warn

        # said where it happens, as the probe says it: the epoch is then chosen by tuning log loss, not discrimination
        warn(f"task {task}: the tuning split's {len(tu)} labels are all one class: the epoch is chosen by tuning log loss "
             "(which favours predicting that class), not by tuning AUROC")
    head = _prevalence_head(mcfg.d_model, float(y[tr].mean()), device)
    feats, params = _trainable(model, head, td, h, context, cfg, device, task)
    opt = torch.optim.AdamW(params, weight_decay=cfg.weight_decay)

    def logits_of(idx: np.ndarray, train: bool) -> torch.Tensor:
        if feats is not None:
            return head(feats[torch.from_numpy(idx).to(device)]).squeeze(-1)
        x, last = padded_batch(td, h, idx, context, device)
        with torch.set_grad_enabled(train):
            hs = model.hidden_states(x)[torch.arange(len(idx), device=device), last]
            return head(hs).squeeze(-1)

    @torch.no_grad()
    def predict(rows: np.ndarray) -> np.ndarray:
        model.eval()
        p = np.zeros(len(rows))
        for b in batches_by_length(np.minimum(h.lengths()[rows], context), cfg.batch_size, context):
            p[b] = torch.sigmoid(logits_of(rows[b], train=False).float()).cpu().numpy()
        if cfg.full:
            model.train()
        return p

    best, curve = _train_with_early_stopping(model, head, opt, logits_of, predict, y, tr, tu, cfg, task, device)
    head.load_state_dict(best[1])
    if cfg.full:
        model.load_state_dict(best[2])
    p = as_stored(predict(np.arange(len(y))))  # score what predictions.parquet holds
    metrics = {
        **binary_metrics(y[ho], p[ho], task, cfg.bootstrap, cfg.seed, h.labels["subject_id"].to_numpy()[ho]),
        "head": "finetune_full" if cfg.full else "finetune_head",
        "split": "held_out",
        "context": context,
        "n_train": int(len(tr)),
        "n_tuning": int(len(tu)),
        "best_epoch": best[3],
        "epochs": curve,
        "model": record,
        "wall_s": time.time() - t0,
    }
    write_head_outputs(out, overwrite, cfg, metrics, split_predictions(h.labels, p, h.split))
    summary(f"finetune {format_metrics(metrics)} (best epoch {best[3]} of {len(curve)}) -> {out}")
    return metrics


def _split_rows(split: np.ndarray, y: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the train, tuning (early stopping) and held_out (scoring) labels."""
    tr, tu, ho = (np.flatnonzero(split == s) for s in SPLITS)
    require_two_classes(y[tr], "train", task)
    if len(tu) == 0:
        raise UserError(f"task {task}: no labels in the tuning split for early stopping")
    if len(ho) == 0:
        raise UserError(f"task {task}: no labels in the held_out split to score")
    return tr, tu, ho


def _prevalence_head(d_model: int, prevalence: float, device):
    """A (d_model -> 1) logistic head starting at the prevalence (bias = its logit): faster, stabler."""
    import torch

    head = torch.nn.Linear(d_model, 1).to(device)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(float(np.log(prevalence / (1 - prevalence))))
    return head


def _trainable(model, head, td, h, context, cfg: FinetuneConfig, device, task):
    """The trainable parameters and, for a frozen model, precomputed features.

    What the optimizer trains: the head on frozen, precomputed features (returned, (n, d_model)),
    or with --full the head and the whole model (features None: recomputed every step).
    """
    import torch

    from ehrfm.clinical.model_io import embed_histories

    if cfg.full:
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        return None, [{"params": head.parameters(), "lr": cfg.lr}, {"params": model.parameters(), "lr": cfg.body_lr}]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    feats = torch.from_numpy(embed_histories(model, td, h, context, cfg.batch_size, device, desc=f"finetune {task}")).to(device)
    return feats, [{"params": head.parameters(), "lr": cfg.lr}]


def _train_with_early_stopping(model, head, opt, logits_of, predict, y, tr, tu, cfg: FinetuneConfig, task, device):
    """Epochs over the train labels in a seeded order until the tuning score has not improved for `patience` epochs.

    Returns (best, curve): best = (score, head state, model state or None, epoch).
    """
    import torch
    import torch.nn.functional as F

    from ehrfm.io import progress

    gen = torch.Generator().manual_seed(cfg.seed)
    y_t = torch.from_numpy(y.astype(np.float32)).to(device)
    best = (-np.inf, None, None, 0)
    curve, stale = [], 0
    for epoch in progress(range(1, cfg.max_epochs + 1), desc=f"finetune {task}", unit="epoch"):
        order = tr[torch.randperm(len(tr), generator=gen).numpy()]
        losses = []
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = F.binary_cross_entropy_with_logits(logits_of(idx, train=True).float(), y_t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.full:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
        train_loss = float(np.mean(losses))
        if not np.isfinite(train_loss):
            raise UserError(f"task {task}: fine-tuning diverged at epoch {epoch} (non-finite loss); lower --lr")
        if train_loss > DIVERGED_LOSS:
            # finite but absurd (3e9 nats at --lr 1e9, every held-out probability 1.0): scored, it read as AUROC 0.500
            raise UserError(f"task {task}: fine-tuning diverged at epoch {epoch} (mean train loss {train_loss:.3g} nats per "
                            f"label, above {DIVERGED_LOSS:g}: predictions confidently wrong); lower --lr")
        score, kind = _tuning_score(y[tu], predict(tu))
        curve.append({"epoch": epoch, "train_loss": train_loss, f"tuning_{kind}": score})
        if score > best[0]:
            best = (score, copy.deepcopy(head.state_dict()), copy.deepcopy(model.state_dict()) if cfg.full else None, epoch)
            stale = 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    return best, curve
