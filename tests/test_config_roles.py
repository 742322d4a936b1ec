"""TrainConfig field roles (metadata) and the field sets the trainer and the planner derive from them."""

from __future__ import annotations

import dataclasses

import pytest

from ehrfm.config import (
    ROLES,
    TrainConfig,
    branch_free_fields,
    choices_of,
    fields_with,
    not_identity_fields,
    per_run_fields,
    resumable_fields,
    wsd_fields,
)
from ehrfm.errors import UserError

# The sets as they were written by hand before the roles (ehrfm/train.py, sweeps/plan.py), and planned_data since
# (a launcher's record of the data, checked at a run's start: runtime, per run).
OLD_RESUMABLE_CHANGES = {
    "tokens_dir", "out_dir", "device", "checkpoint_interval", "log_interval", "eval_interval",
    "eval_batch_size", "micro_batch_size", "attention", "compile", "overwrite", "extra", "planned_data",
}
OLD_BRANCH_FREE = OLD_RESUMABLE_CHANGES | {"tokens", "flops", "trunk_dir", "stable_checkpoints"}
OLD_NOT_IDENTITY = {
    "tokens_dir", "out_dir", "overwrite", "extra", "device", "checkpoint_interval", "log_interval",
    "eval_interval", "eval_batch_size", "micro_batch_size", "attention", "compile", "trunk_dir", "planned_data",
}
OLD_PER_RUN_FIELDS = {"tokens_dir", "out_dir", "n_layer", "d_model", "n_head", "context", "tokens", "flops", "overwrite",
                      "extra", "schedule", "warmup_steps", "trunk_dir", "stable_checkpoints", "planned_data"}
OLD_WSD_FIELDS = {"schedule", "decay_fraction", "decay_shape", "warmup_steps", "trunk_dir", "stable_checkpoints"}


def test_every_field_has_a_role():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("role") in ROLES, f.name
    assert set().union(*(fields_with(TrainConfig, "role", r) for r in ROLES)) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_derived_sets_equal_the_old_hand_written_ones():
    from ehrfm.train import BRANCH_FREE, RESUMABLE_CHANGES
    from sweeps.plan import NOT_IDENTITY, PER_RUN_FIELDS, WSD_FIELDS

    assert resumable_fields() == RESUMABLE_CHANGES == OLD_RESUMABLE_CHANGES
    assert branch_free_fields() == BRANCH_FREE == OLD_BRANCH_FREE
    assert not_identity_fields() == NOT_IDENTITY == OLD_NOT_IDENTITY
    assert per_run_fields() == PER_RUN_FIELDS == OLD_PER_RUN_FIELDS
    assert wsd_fields() == WSD_FIELDS == OLD_WSD_FIELDS


def test_choices_come_from_metadata_and_are_enforced():
    assert choices_of(TrainConfig, "schedule") == ("cosine", "wsd")
    with pytest.raises(UserError, match=r"dtype must be auto, float32 or bfloat16 \(got 'fp16'\)"):
        TrainConfig(tokens_dir="t", out_dir="o", tokens=1, dtype="fp16")
    with pytest.raises(UserError, match=r"decay_shape must be linear or 1-sqrt"):
        TrainConfig(tokens_dir="t", out_dir="o", tokens=1, decay_shape="cos")
