"""Clinical tasks: labels, probes, fine-tuned heads, zero-shot rollout, count baselines.

Public API (each CLI subcommand wraps one of these):

    make_labels(meds_dir, task) / write_labels / read_labels      ehrfm labels
    audit(meds_dir, labels) -> AuditResult                         ehrfm audit
    probe(ProbeConfig(...), out)                                   ehrfm probe
    finetune(FinetuneConfig(...), out)                             ehrfm finetune
    zeroshot(ZeroShotConfig(...), out)                             ehrfm zeroshot
    baseline(BaselineConfig(...), out)                             ehrfm baseline
    score_run(run_dir, tokens_dir, {task: labels}) -> {"auroc/<task>": ..}   sweeps
    binary_metrics(y, p, task)                                     metrics.json contents

Modules are imported lazily so that `import ehrfm.clinical` stays light (no torch).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TASKS": "labels",
    "make_labels": "labels",
    "write_labels": "labels",
    "read_labels": "labels",
    "LabelConfig": "labels",
    "audit": "audit",
    "AuditResult": "audit",
    "ProbeConfig": "probe",
    "probe": "probe",
    "FinetuneConfig": "finetune",
    "finetune": "finetune",
    "ZeroShotConfig": "zeroshot",
    "zeroshot": "zeroshot",
    "BaselineConfig": "baseline",
    "baseline": "baseline",
    "score_run": "utility",
    "label_files": "utility",
    "binary_metrics": "metrics",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"ehrfm.clinical.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ehrfm.clinical' has no attribute {name!r}")
