"""ehrfm: EHR foundation models and their scaling laws.

Stages (one package each, meeting only at the files described in DESIGN.md):
    tokenization/  raw MIMIC-IV -> MEDS -> event tokens
    ehrfm/         model, training, clinical heads, the `ehrfm` CLI, shared helpers
    sweeps/        IsoFLOP planning, submitit launching, results table
    analysis/      scaling-law fits, plots, compute-optimal recommendations
"""

__version__ = "0.1.0"
