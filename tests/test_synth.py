"""Synthetic MIMIC-IV: real layout, deterministic, and clinically structured enough to predict from."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import polars as pl
import pytest

from ehrfm.errors import UserError
from tokenization.synth import synthesize

TABLES = [
    "hosp/patients", "hosp/admissions", "hosp/transfers", "hosp/diagnoses_icd", "hosp/procedures_icd",
    "hosp/labevents", "hosp/prescriptions", "hosp/d_labitems", "hosp/d_icd_diagnoses", "hosp/d_icd_procedures",
    "icu/icustays", "icu/chartevents", "icu/d_items",
]


CHARTEVENTS_HEADER = ["subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime", "storetime", "itemid", "value", "valuenum", "valueuom", "warning"]


def _header(path):
    with gzip.open(path, "rt") as f:
        return f.readline().strip().split(",")


def _digest(root):
    return {t: hashlib.sha256((root / f"{t}.csv.gz").read_bytes()).hexdigest() for t in TABLES}


def test_synth_writes_every_table_with_the_real_mimic_iv_columns(synth_raw, mimic_demo_dir):
    for t in TABLES:
        assert (synth_raw / f"{t}.csv.gz").is_file(), t
        real = mimic_demo_dir / f"{t}.csv.gz"
        # The public demo has no chartevents; its MIMIC-IV 2.2 header is this one.
        expected = _header(real) if real.exists() else CHARTEVENTS_HEADER
        assert _header(synth_raw / f"{t}.csv.gz") == expected, t


def test_synth_values_parse_like_mimic(synth_raw):
    adm = pl.read_csv(synth_raw / "hosp/admissions.csv.gz", try_parse_dates=True)
    assert adm.schema["admittime"] == pl.Datetime("us") and adm.schema["hadm_id"] == pl.Int64
    assert (adm["dischtime"] > adm["admittime"]).all()
    # In-hospital deaths: deathtime set exactly when the flag is, and discharged as DIED.
    died = adm.filter(pl.col("hospital_expire_flag") == 1)
    assert died.height > 0 and died["deathtime"].null_count() == 0
    assert (died["discharge_location"] == "DIED").all()
    assert adm.filter(pl.col("hospital_expire_flag") == 0)["deathtime"].null_count() == adm.height - died.height
    pats = pl.read_csv(synth_raw / "hosp/patients.csv.gz")
    assert pats.height == 400 and set(pats["gender"]) == {"F", "M"}
    assert pats["anchor_age"].min() >= 18 and pats["anchor_age"].max() <= 91
    labs = pl.read_csv(synth_raw / "hosp/labevents.csv.gz", try_parse_dates=True)
    items = set(pl.read_csv(synth_raw / "hosp/d_labitems.csv.gz")["itemid"])
    assert set(labs["itemid"]) <= items
    creat = labs.filter(pl.col("itemid") == 50912)["valuenum"]  # creatinine, mg/dL
    assert 0.5 < creat.median() < 2.0 and creat.min() > 0
    # Every lab falls inside its admission.
    j = labs.join(adm.select("hadm_id", "admittime", "dischtime"), on="hadm_id")
    assert j.height == labs.height
    assert (j["charttime"] >= j["admittime"]).all() and (j["charttime"] <= j["dischtime"]).all()


def test_synth_is_deterministic_in_the_seed(tmp_path):
    synthesize(tmp_path / "a", n_patients=50, seed=3)
    synthesize(tmp_path / "b", n_patients=50, seed=3)
    synthesize(tmp_path / "c", n_patients=50, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a")["hosp/labevents"] != _digest(tmp_path / "c")["hosp/labevents"]


def test_synth_refuses_existing_output_and_bad_counts(tmp_path):
    synthesize(tmp_path / "a", n_patients=5, seed=0)
    with pytest.raises(UserError, match="already exists"):
        synthesize(tmp_path / "a", n_patients=5, seed=0)
    synthesize(tmp_path / "a", n_patients=6, seed=0, overwrite=True)
    assert pl.read_csv(tmp_path / "a/hosp/patients.csv.gz").height == 6
    with pytest.raises(UserError, match="at least 1"):
        synthesize(tmp_path / "z", n_patients=0)


# --------------------------------------------------------------------- clinical structure
def _mortality_task(meds):
    """In-hospital mortality at admission + 24 h, from MEDS (admissions still in hospital then)."""
    df = pl.read_parquet(meds / "data/*/*.parquet").filter(pl.col("time").is_not_null())
    splits = pl.read_parquet(meds / "metadata/subject_splits.parquet")
    adm = df.filter(pl.col("code").str.starts_with("HOSPITAL_ADMISSION//")).select("subject_id", "hadm_id", admit="time")
    dis = df.filter(pl.col("code").str.starts_with("HOSPITAL_DISCHARGE//")).select("hadm_id", disch="time")
    death = df.filter(pl.col("code") == "MEDS_DEATH").group_by("subject_id").agg(death=pl.col("time").min())
    lab = (
        adm.join(dis, on="hadm_id").join(death, on="subject_id", how="left")
        .with_columns(pt=pl.col("admit") + pl.duration(hours=24))
        .filter(pl.col("disch") > pl.col("pt"))
        .with_columns(y=(pl.col("death").is_not_null() & (pl.col("death") <= pl.col("disch"))).cast(pl.Int8))
        .join(splits, on="subject_id")
    )
    return df, lab


def _count_features(df, lab, codes, start, stop):
    """log(1 + count) of each code in (start, stop] per labelled admission."""
    j = lab.select("subject_id", "hadm_id", start, stop).join(df.select("subject_id", "time", "code"), on="subject_id")
    j = j.filter((pl.col("time") <= pl.col(stop)) & (pl.col("time") > pl.col(start)))
    g = j.group_by("hadm_id", "code").len()
    row = {h: i for i, h in enumerate(lab["hadm_id"].to_list())}
    col = {c: i for i, c in enumerate(codes)}
    X = np.zeros((lab.height, len(codes)))
    X[[row[h] for h in g["hadm_id"]], [col[c] for c in g["code"]]] = g["len"].to_numpy()
    return np.log1p(X)


@pytest.fixture(scope="module")
def meds_2000(tmp_path_factory):
    from tokenization.etl import etl

    root = tmp_path_factory.mktemp("synth2000")
    synthesize(root / "raw", n_patients=2000, seed=0)
    etl(root / "raw", root / "meds")
    return root / "meds"


def test_mortality_at_24h_is_predictable_from_count_features(meds_2000):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    df, lab = _mortality_task(meds_2000)
    y = lab["y"].to_numpy()
    assert lab.height > 2000 and 0.05 < y.mean() < 0.25  # a realistic, not degenerate, outcome
    codes = df["code"].unique().sort().to_list()
    lab = lab.with_columns(since=pl.col("pt") - pl.duration(hours=24))
    X = _count_features(df, lab, codes, "since", "pt")
    train = (lab["split"] == "train").to_numpy()
    model = LogisticRegression(max_iter=3000, C=0.3).fit(X[train], y[train])
    auroc = roc_auc_score(y[~train], model.predict_proba(X[~train])[:, 1])
    assert auroc >= 0.70, auroc


def test_history_before_the_admission_carries_outcome_signal(meds_2000):
    """Chronic conditions coded in earlier admissions predict death in the current one."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    df, lab = _mortality_task(meds_2000)
    # Only admissions with history, and only what was known before they began.
    lab = lab.with_columns(before=pl.col("admit") - pl.duration(seconds=1),
                           origin=pl.lit(None, pl.Datetime("us")).fill_null(pl.datetime(1900, 1, 1)))
    df_hist = df.filter(pl.col("code").str.starts_with("DIAGNOSIS//") | pl.col("code").str.starts_with("MEDICATION//"))
    codes = df_hist["code"].unique().sort().to_list()
    X = _count_features(df_hist, lab, codes, "origin", "before")
    has_history = X.sum(1) > 0
    X, y, split = X[has_history], lab["y"].to_numpy()[has_history], lab["split"].to_numpy()[has_history]
    train = split == "train"
    model = LogisticRegression(max_iter=3000, C=0.3).fit(X[train], y[train])
    auroc = roc_auc_score(y[~train], model.predict_proba(X[~train])[:, 1])
    assert auroc >= 0.60, auroc


def test_synth_streams_in_chunks_with_ids_unique_across_chunks(tmp_path, monkeypatch):
    """Patients are generated CHUNK_PATIENTS at a time (bounded memory) and appended to the same
    files: one header, every id unique, and each chunk a function of (seed, chunk) alone."""
    import tokenization.synth as synth

    monkeypatch.setattr(synth, "CHUNK_PATIENTS", 40)
    sizes = []
    generate = synth._generate
    monkeypatch.setattr(synth, "_generate", lambda cfg, c, first, n, ids: sizes.append(n) or generate(cfg, c, first, n, ids))
    res = synthesize(tmp_path / "a", n_patients=100, seed=5)
    assert sizes == [40, 40, 20]
    root = tmp_path / "a"
    pats = pl.read_csv(root / "hosp/patients.csv.gz")
    assert pats["subject_id"].to_list() == list(range(10_000_000, 10_000_100))
    for table, cols in {
        "hosp/admissions": ["hadm_id"], "icu/icustays": ["stay_id"], "hosp/transfers": ["transfer_id"],
        "hosp/labevents": ["labevent_id"], "hosp/prescriptions": ["pharmacy_id", "poe_id", "poe_seq"],
    }.items():
        df = pl.read_csv(root / f"{table}.csv.gz")  # a second header line would make every id a string
        assert df.height == res["tables"][table] > 0, table
        for c in cols:
            assert df[c].n_unique() == df.height, (table, c)
    # Specimens: one per blood draw, never shared by two admissions.
    labs = pl.read_csv(root / "hosp/labevents.csv.gz", columns=["specimen_id", "hadm_id"])
    assert labs.group_by("specimen_id").agg(pl.col("hadm_id").n_unique())["hadm_id"].max() == 1
    # ICU stays and labs point at admissions of the same subject.
    adm = pl.read_csv(root / "hosp/admissions.csv.gz", columns=["subject_id", "hadm_id"])
    for table in ("icu/icustays", "hosp/labevents", "hosp/transfers"):
        j = pl.read_csv(root / f"{table}.csv.gz", columns=["subject_id", "hadm_id"]).join(adm, on="hadm_id")
        assert (j["subject_id"] == j["subject_id_right"]).all(), table
    # The first chunk does not depend on how many patients follow it.
    synthesize(tmp_path / "b", n_patients=40, seed=5)
    assert pl.read_csv(tmp_path / "b/hosp/patients.csv.gz").equals(pats.head(40))


def test_icu_vitals_stay_physiological(synth_raw):
    """ICU vitals stay within what a monitor shows: the severity effect once wrote a quarter of systolic
    pressures below 40 mmHg, some negative."""
    from tokenization.synth import SBP_FLOOR, _pressure_floor

    vitals = pl.read_csv(synth_raw / "icu/chartevents.csv.gz").group_by("itemid").agg(
        pl.col("valuenum").min().alias("lo"), pl.col("valuenum").median().alias("mid"), pl.col("valuenum").max().alias("hi"))
    ranges = {220045: (20, 250), 220179: (SBP_FLOOR, 250), 220210: (4, 60), 220277: (50, 100), 223761: (90, 108)}
    assert set(vitals["itemid"]) == set(ranges)
    for itemid, lo, mid, hi in vitals.iter_rows():
        assert ranges[itemid][0] < lo <= mid <= hi <= ranges[itemid][1], (itemid, lo, mid, hi)
    sbp = vitals.filter(pl.col("itemid") == 220179)
    assert 80 < sbp["mid"].item() < 130
    # The bend keeps every pressure's order (hence its decile token) and leaves those above its knee as they were.
    grid = np.round(np.arange(-80.0, 160.0, 0.1), 1)
    bent = _pressure_floor(grid)
    # strictly increasing where the demo cohort's pressures lie (its lowest is -10.5 mmHg before the bend)
    assert (np.diff(bent) >= 0).all() and (np.diff(bent[grid >= -20]) > 0).all() and bent.min() > SBP_FLOOR
    assert (bent[grid >= 100] == grid[grid >= 100]).all() and (bent[grid < 100] >= grid[grid < 100]).all()
    assert abs(_pressure_floor(np.array([28.8]))[0] - 58.31) < 0.005  # the demo cohort's lowest decile edge
