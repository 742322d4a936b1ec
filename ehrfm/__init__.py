"""ehrfm: EHR foundation models and their scaling laws.

Stages (one package each, meeting only at the files described in DESIGN.md):
    tokenization/  raw MIMIC-IV -> MEDS -> event tokens
    ehrfm/         model, training, clinical heads, the `ehrfm` CLI, shared helpers
    sweeps/        IsoFLOP planning, submitit launching, results table
    analysis/      scaling-law fits, plots, compute-optimal recommendations
"""

__version__ = "0.1.0"


def load_model(run, device="cpu"):
    """The trained model of a run dir: `model(ids)` maps (B, T) int64 ids to (B, T, V) logits.

    See ehrfm.export.load_model (imported here lazily so that `import ehrfm` stays torch-free).
    """
    from ehrfm.export import load_model as _load_model

    return _load_model(run, device)
