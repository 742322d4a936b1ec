"""ACES task configs (es-aces, the MEDS ecosystem's label tool) for the four ehrfm tasks.

    aces-cli data.path=MEDS.parquet data.standard=meds cohort_dir=$(python -c "import ehrfm.clinical.aces as a; print(a.CONFIG_DIR)") \
        cohort_name=in_hospital_mortality output_filepath=labels/in_hospital_mortality.parquet

Each YAML mirrors a rule of ehrfm/clinical/labels.py (`ehrfm labels`); the label parquet aces-cli
writes is in the MEDS label schema and feeds every head, `ehrfm baseline` and `sweep collect --labels`
as is. On the MIMIC-IV demo every ACES label equals `ehrfm labels`' (tests/test_ecosystem_faults.py;
tests/test_aces.py checks the counts); long_los leaves out the 6 short stays (of 243) that follow a stay
ended in the week before their discharge, which ACES cannot tell from long ones (long_los.yaml).
Stays never discharged, which `ehrfm labels` excludes, and discharges of no stay (a record that
starts mid-stay), which it ignores, get no ACES label either. Known differences: a stay of zero
length (admitted and discharged at one minute) gets no ACES label, though `ehrfm labels` labels its
discharge for readmission, and long_los leaves out a stay that follows one of zero length; long_los
labels nothing for a record without MEDS_BIRTH (its first window opens at birth); events at one time are one ACES row, so the windows start 1 s
after an admission, or end 1 s before a discharge, where another stay's event may share its minute.
The `transfer` windows (a next admission within 1 h of the discharge) also see an admission opened
after the patient's death (an organ-donation record within the hour), which `ehrfm labels` never
counts as a next stay; and the readmission config matches `HOSPITAL_DISCHARGE//ACUTE HOSPITAL` exactly,
where `ehrfm labels` ignores case and spaces around the location. Neither occurs on the MIMIC-IV demo.
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
