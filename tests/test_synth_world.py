"""The synthetic cohort's ground truth (tokenization.synth_world) is what the generated tables show:
Zipf prevalence of the latent conditions, their signatures, long-range effects of remote history."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from tokenization import synth_world as world
from tokenization.synth import synthesize

N = 10_000


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_world") / "raw"
    synthesize(out, n_patients=N, seed=1)
    return out


@pytest.fixture(scope="module")
def truth(raw):
    return json.loads((raw / "ground_truth.json").read_text())


def _dx(raw):
    return pl.read_csv(raw / "hosp/diagnoses_icd.csv.gz", columns=["subject_id", "hadm_id", "icd_code"],
                       schema_overrides={"icd_code": pl.String})


def test_ground_truth_is_written_beside_the_tables_and_names_every_coded_condition(raw, truth):
    assert truth["zipf"]["exponent"] == world.ZIPF_EXPONENT and truth["zipf"]["ranks"] == [9, world.N_CONDITIONS]
    conds = truth["conditions"]
    assert [c["rank"] for c in conds] == list(range(1, world.N_CONDITIONS + 1))
    tail = conds[world.N_HEAD:]
    assert {c["kind"] for c in tail} == {"chronic", "episodic"}
    assert all((c["tau_years"] is None) == (c["kind"] == "chronic") for c in tail)
    # Zipf: each documented prevalence is the law's value at its rank.
    p = np.array([c["prevalence"] for c in tail])
    r = np.array([c["rank"] for c in tail])
    np.testing.assert_allclose(p, 0.05 * (r / 9.0) ** -1.1, rtol=1e-4)
    # Codes: unique, in their family's ICD-10-CM category, and all in d_icd_diagnoses.
    codes = [c["code"] for c in tail]
    assert len(set(codes)) == len(codes) and all(c["code"].startswith(c["family"]) for c in tail)
    d = set(pl.read_csv(raw / "hosp/d_icd_diagnoses.csv.gz", schema_overrides={"icd_code": pl.String})["icd_code"])
    assert set(codes) <= d and set(_dx(raw)["icd_code"]) <= d
    assert {r["name"] for r in truth["long_range_rules"]} >= {"prior_mi", "prior_sepsis", "prior_hip_fracture"}
    # The file describes the world, never patients: same bytes for another seed and size.
    other = raw.parent / "other"
    synthesize(other, n_patients=3, seed=9)
    assert (other / "ground_truth.json").read_bytes() == (raw / "ground_truth.json").read_bytes()


def test_tail_condition_prevalence_in_the_output_follows_the_documented_zipf_exponent(raw, truth):
    """Share of patients coded with each tail condition vs its rank: a log-log slope of -exponent."""
    tail = truth["conditions"][world.N_HEAD:]
    rank = {c["code"]: c["rank"] for c in tail}
    dx = _dx(raw).filter(pl.col("icd_code").is_in(list(rank)))
    n_pat = dx.group_by("icd_code").agg(pl.col("subject_id").n_unique().alias("n"))
    counts = dict(zip(n_pat["icd_code"], n_pat["n"], strict=True))
    r = np.array(sorted(rank.values()), dtype=float)
    n = np.array([counts.get(c["code"], 0) for c in sorted(tail, key=lambda c: c["rank"])], dtype=float)
    # Ranks whose expected count is large enough for a log to be stable (>= ~20 patients).
    fit = 0.05 * (r / 9.0) ** -1.1 * N >= 25
    assert fit.sum() >= 60, fit.sum()
    slope, _ = np.polyfit(np.log(r[fit]), np.log(n[fit]), 1)
    assert abs(slope + world.ZIPF_EXPONENT) < 0.15, slope
    # The rarest ranks are present but rare: the tail keeps going past what 5,000 patients show well.
    assert 0 < n[r > 300].sum() < 0.02 * N * (r > 300).sum()


def test_a_tail_condition_shifts_its_documented_lab(raw, truth):
    """For the most frequent tail conditions, the first draw's family-lab value moves in the documented
    direction at admissions coded with the condition."""
    labs = pl.read_csv(raw / "hosp/labevents.csv.gz", columns=["hadm_id", "itemid", "valuenum", "charttime"])
    labs = labs.sort("charttime").group_by("hadm_id", "itemid", maintain_order=True).first()
    item = {row[1]: row[0] for row in pl.read_csv(raw / "hosp/d_labitems.csv.gz").select("itemid", "label").rows()}
    dx = _dx(raw)
    agree = 0
    top = [c for c in truth["conditions"][world.N_HEAD:] if c["kind"] == "chronic"][:10]
    for c in top:
        lab, shift = max(c["lab_shift_sd"].items(), key=lambda kv: abs(kv[1]))
        v = labs.filter(pl.col("itemid") == item[lab])
        coded = dx.filter(pl.col("icd_code") == c["code"]).select("hadm_id").unique()
        with_c = v.join(coded, on="hadm_id")["valuenum"].median()
        without = v.join(coded, on="hadm_id", how="anti")["valuenum"].median()
        agree += np.sign(with_c - without) == np.sign(shift)
    assert agree >= 9, agree


def _remote_event_mortality(raw, code, table, min_days):
    """In-hospital mortality of admissions that have an earlier stay more than `min_days` before them:
    those where such a remote stay carried `code` vs those where none did (both groups have an old
    history, so the comparison is not one of long survivors against new patients)."""
    adm = pl.read_csv(raw / "hosp/admissions.csv.gz", try_parse_dates=True,
                      columns=["subject_id", "hadm_id", "admittime", "hospital_expire_flag"])
    ev = pl.read_csv(raw / f"hosp/{table}.csv.gz", columns=["hadm_id", "icd_code"], schema_overrides={"icd_code": pl.String})
    coded = ev.filter(pl.col("icd_code") == code).select(prev="hadm_id").unique().with_columns(ev=pl.lit(True))
    prev = adm.select("subject_id", prev="hadm_id", prev_t="admittime").join(coded, on="prev", how="left")
    j = (adm.join(prev, on="subject_id").with_columns(days=(pl.col("admittime") - pl.col("prev_t")).dt.total_days())
         .filter(pl.col("days") > min_days))
    f = adm.join(j.group_by("hadm_id").agg(hit=pl.col("ev").fill_null(False).any()), on="hadm_id")
    y = f.filter(pl.col("hit"))["hospital_expire_flag"]
    return y.len(), y.mean(), f.filter(~pl.col("hit"))["hospital_expire_flag"].mean()


def test_history_from_over_a_year_earlier_raises_the_risk_of_a_later_stay(raw):
    """A hip fracture coded more than a year before an admission raises its in-hospital mortality
    (the persistent `prior_hip_fracture` rule), measured in the tables, not read from the truth."""
    n_hit, with_hip, without = _remote_event_mortality(raw, "S72001A", "diagnoses_icd", 365)
    assert n_hit > 300, n_hit
    assert with_hip > 1.2 * without, (with_hip, without)
