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

from ehrfm.lazy import lazy_exports

_EXPORTS = {
    "TASKS": "ehrfm.clinical.labels",
    "make_labels": "ehrfm.clinical.labels",
    "write_labels": "ehrfm.clinical.labels",
    "read_labels": "ehrfm.clinical.labels",
    "LabelConfig": "ehrfm.clinical.labels",
    "audit": "ehrfm.clinical.audit",
    "AuditResult": "ehrfm.clinical.audit",
    "ProbeConfig": "ehrfm.clinical.probe",
    "probe": "ehrfm.clinical.probe",
    "FinetuneConfig": "ehrfm.clinical.finetune",
    "finetune": "ehrfm.clinical.finetune",
    "ZeroShotConfig": "ehrfm.clinical.zeroshot",
    "zeroshot": "ehrfm.clinical.zeroshot",
    "BaselineConfig": "ehrfm.clinical.baseline",
    "baseline": "ehrfm.clinical.baseline",
    "score_run": "ehrfm.clinical.utility",
    "label_files": "ehrfm.clinical.utility",
    "binary_metrics": "ehrfm.clinical.metrics",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
