"""The results table's schema (DESIGN.md section 4): the one contract between training and analysis.

`sweeps.collect` writes SWEEP/results.parquet with `results_schema` (every column, in this
order, plus the utility columns it scored); `analysis.table` reads any table that has the
`RESULTS_REQUIRED` columns and the loss column (a hand-made CSV with n_params, tokens, loss is
enough: flops then defaults to 6 * n_params * tokens), and reads the others when present.
"""

from __future__ import annotations

import pyarrow as pa

# (name, type) of every column `sweep collect` writes, in order.
RESULTS_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("run_id", pa.string()),
    ("budget", pa.float64()),  # the planned IsoFLOP budget C (null if unplanned)
    ("n_params", pa.int64()),  # non-embedding parameters N
    ("n_params_total", pa.int64()),
    ("tokens", pa.int64()),  # training tokens D
    ("flops", pa.float64()),
    ("unique_tokens", pa.int64()),  # the train split's tokens: the data every run may use
    ("epochs", pa.float64()),  # tokens / unique_tokens
    ("over_one_epoch", pa.bool_()),  # epochs > 1: the run repeated data
    ("loss", pa.float64()),  # held-out nats/token (null unless completed)
    ("loss_per_event", pa.float64()),  # held-out nats/event (null unless completed)
    ("eval_loss_se", pa.float64()),  # standard error of loss over eval subjects (ehrfm.train.ratio_se)
    ("loss_per_event_se", pa.float64()),
    ("status", pa.string()),  # ehrfm.results.Status; only completed rows are fitted
    ("error", pa.string()),
    ("n_layer", pa.int64()),
    ("d_model", pa.int64()),
    ("n_head", pa.int64()),
    ("context", pa.int64()),
    ("vocab_size", pa.int64()),
    ("seed", pa.int64()),
    ("wall_s", pa.float64()),
    ("tokens_per_s", pa.float64()),
    ("job_id", pa.string()),
    ("schedule", pa.string()),  # cosine | wsd
    ("trunk_id", pa.string()),  # wsd: the run id of the trunk whose stable phase the run shares
    ("dtype", pa.string()),  # the precision the run trained in (float32 on CPU, bfloat16 on CUDA with dtype auto)
    ("device", pa.string()),  # where it began (cpu, cuda)
)
# What a reader needs besides the loss column it fits (`loss` or `loss_per_event`).
RESULTS_REQUIRED = ("n_params", "tokens")
# Optional utility columns, one per task: float64 "auroc/<task>", "auroc_se/<task>" (DeLong
# standard error of auroc/<task>), "auprc/<task>"; list<float64> "auroc_boot/<task>" (AUROC on
# bootstrap resamples of the held-out labels shared by every run of the sweep: replicate r of two
# runs is the same resample, ehrfm.clinical.metrics.shared_bootstrap_auroc).
UTILITY_PREFIXES = ("auroc/", "auroc_se/", "auprc/", "auroc_boot/")
UTILITY_LIST_PREFIXES = ("auroc_boot/",)


def results_schema(utility_columns: list[str] | tuple[str, ...] = ()) -> pa.Schema:
    """The full results.parquet schema, with the given utility columns at the end (float64; list<float64> for auroc_boot/)."""
    return pa.schema([*RESULTS_COLUMNS, *((c, pa.list_(pa.float64()) if c.startswith(UTILITY_LIST_PREFIXES) else pa.float64())
                                          for c in utility_columns)])


def is_utility_column(name: str) -> bool:
    """Is `name` a utility column (auroc/<task>, auroc_se/<task>, auprc/<task>, auroc_boot/<task>)?"""
    return name.startswith(UTILITY_PREFIXES)
