"""ACES task configs (es-aces, the MEDS ecosystem's label tool) for the four ehrfm tasks.

    aces-cli data.path=MEDS.parquet data.standard=meds cohort_dir=$(python -c "import ehrfm.clinical.aces as a; print(a.CONFIG_DIR)") \
        cohort_name=in_hospital_mortality output_filepath=labels/in_hospital_mortality.parquet

Each YAML mirrors a rule of ehrfm/clinical/labels.py (`ehrfm labels`); the label parquet aces-cli
writes is in the MEDS label schema and feeds every head, `ehrfm baseline` and `sweep collect --labels`
as is. On the MIMIC-IV demo the counts agree within 10% (tests/test_aces.py; DESIGN/README note the
differences: unpaired admissions and discharges coinciding with a readmission).
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
TASKS = ("in_hospital_mortality", "long_los", "icu_admission", "readmission_30d")


def config_path(task: str) -> Path:
    """Path of the ACES task config of `task` (one of TASKS)."""
    if task not in TASKS:
        from ehrfm.errors import UserError

        raise UserError(f"no ACES config for task {task!r}; tasks: {', '.join(TASKS)}")
    return CONFIG_DIR / f"{task}.yaml"
