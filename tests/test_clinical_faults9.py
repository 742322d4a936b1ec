"""Clinical label boundaries found by a metamorphic/boundary review (real MEDS parquet, no mocks)."""

from __future__ import annotations

import polars as pl
from test_labels import T0, d, h, labels_of, stay

from ehrfm.clinical.audit import audit
from ehrfm.clinical.labels import write_labels


def test_an_icu_stay_begun_long_before_the_admission_and_still_open_is_in_the_icu(tmp_path):
    # No stay id: ICU stay begun 30 h before the admission (outside the 24 h boarding window),
    # ended 2 days into the stay: the patient is in the ICU when the prediction is made.
    events = (stay(1, T0, T0 + d(5), [(1, T0 - h(30), "ICU_ADMISSION//MICU"), (1, T0 + d(2), "ICU_DISCHARGE//MICU")])
              # ended before the admission (30 h before it began): not in the ICU; ICU on day 2 -> positive
              + stay(2, T0, T0 + d(5), [(2, T0 - h(40), "ICU_ADMISSION//MICU"), (2, T0 - h(30), "ICU_DISCHARGE//MICU"),
                                        (2, T0 + d(2), "ICU_ADMISSION//SICU")])
              # no ICU discharge recorded at all: nothing says the patient is still there -> negative
              + stay(3, T0, T0 + d(5), [(3, T0 - d(30), "ICU_ADMISSION//MICU")]))
    labels, info = labels_of(tmp_path, events, "icu_admission")
    assert labels == {(2, T0): True, (3, T0): False}
    assert info["excluded"]["in_icu_at_prediction_time"] == 1

    # The audit sees a label made at such a time: the outcome (the ICU bed) is already there.
    meds = tmp_path / "meds"
    write_labels(pl.DataFrame({"subject_id": [1, 2, 3], "prediction_time": [T0, T0, T0], "boolean_value": [False, True, False]}),
                 tmp_path / "icu_admission.parquet")
    res = audit(meds, tmp_path / "icu_admission.parquet")
    assert res.tasks["icu_admission"].outcome_code_in_history == 1
