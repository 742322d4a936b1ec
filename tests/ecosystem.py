"""Helpers for tests that hand our outputs to the MEDS ecosystem's own tools (real packages, no stand-ins)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# meds-evaluation's PredictionSchema, in the order our heads write it
PREDICTION_COLUMNS = ["subject_id", "prediction_time", "boolean_value", "predicted_boolean_value", "predicted_boolean_probability"]


def meds_evaluation_auroc(predictions: Path) -> float:
    """AUROC that `meds-evaluation-cli` (package meds-evaluation, the `test` extra) computes for a file.

    Fails (does not skip) when the CLI is missing: the check must run in CI.
    """
    cli = Path(sys.executable).parent / "meds-evaluation-cli"
    assert cli.exists(), "meds-evaluation-cli not found: pip install -e '.[test]' (meds-evaluation)"
    out = Path(predictions).parent / f"{Path(predictions).stem}.meds_evaluation.json"
    r = subprocess.run([str(cli), f"predictions_path={predictions}", f"output_file={out}"], capture_output=True, text=True)
    assert r.returncode == 0, f"meds-evaluation-cli exit {r.returncode}: " + r.stdout[-2000:] + r.stderr[-2000:]
    return float(json.loads(out.read_text())["samples_equally_weighted"]["roc_auc_score"])
