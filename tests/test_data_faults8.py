"""Faults of real-world MIMIC-IV exports on the real demo (continued from test_data_faults7.py):
characters that break codes, values whose order followed the file.

Each test damages a few values of the real demo's tables (never printed: codes and counts only) and
fails without its fix.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_data_faults5 import _raw

from ehrfm.errors import UserError
from tokenization.etl import etl

pytestmark = pytest.mark.usefixtures("quiet")

CONTROL = r"[\x00-\x1f\x7f-\x9f]"


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setenv("EHRFM_QUIET", "1")


def _demo_copy(demo: Path, out: Path, tables: list[str], edit) -> Path:
    """out/raw: the real demo's patients, admissions and `tables`, each of `tables` as edit(header, rows)."""
    for t in ["hosp/patients", "hosp/admissions", *tables]:
        dst = out / "raw" / f"{t}.csv.gz"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(demo / f"{t}.csv.gz", dst)
        if t in tables:
            header, *rows = list(csv.reader(io.StringIO(gzip.decompress(dst.read_bytes()).decode(), newline="")))
            text = io.StringIO(newline="")
            csv.writer(text, lineterminator="\n").writerows([header, *edit(header, rows)])
            dst.write_bytes(gzip.compress(text.getvalue().encode(), compresslevel=1, mtime=0))
    return out / "raw"


def _inserted(column: str, chars: str, n: int = 3):
    """An edit putting `chars` inside the value of `column` of the first n rows that have one."""
    def edit(header, rows):
        i, done = header.index(column), 0
        for r in rows:
            if len(r[i]) > 2 and done < n:
                r[i], done = r[i][:2] + chars + r[i][2:], done + 1
        return rows
    return edit


def _events(meds: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted((meds / "data").rglob("*.parquet"))])


def test_a_nul_byte_in_a_value_is_refused_naming_file_column_and_count(mimic_demo_dir, tmp_path):
    """A NUL byte (a block of zeros from a failed copy) inside a drug name went into the event code as
    it was (`MEDICATION//He\\x00parin`: 3 such codes from 3 damaged demo rows), a code no vocabulary or
    tokenizer matches. It is refused as text that is not UTF-8 is: one error naming the file, the
    column and how many values, no value, nothing written."""
    raw = _demo_copy(mimic_demo_dir, tmp_path, ["hosp/prescriptions"], _inserted("drug", "x\x00"))
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    msg = str(e.value)
    assert "prescriptions.csv.gz: column 'drug' has 3 values holding a NUL byte" in msg
    assert "\x00" not in msg and "He" not in msg
    assert not (tmp_path / "meds").exists()


def test_other_control_characters_are_removed_and_counted_not_refused(mimic_demo_dir, tmp_path):
    """Real free text holds control characters that are not damage (cp1252 text read as Latin-1 leaves
    C1 characters such as U+0081, as in MIMIC-IV-ED's chief complaints): refusing the whole table
    for them would stop an ETL of full MIMIC-IV. They are removed, counted per column, and the MEDS
    is the one written without them."""
    raw = _demo_copy(mimic_demo_dir, tmp_path / "plain", ["hosp/prescriptions"], _inserted("drug", "x"))
    etl(raw, tmp_path / "plain" / "meds", split_fractions=(1.0, 0.0, 0.0))
    plain = _events(tmp_path / "plain" / "meds")
    for i, chars in enumerate(["\x07", "\x1b\x7f", "\x81\x80\x87", "\x9f"]):
        out = tmp_path / f"c{i}"
        raw = _demo_copy(mimic_demo_dir, out, ["hosp/prescriptions"], _inserted("drug", f"x{chars}"))
        etl(raw, out / "meds", split_fractions=(1.0, 0.0, 0.0))
        ev = _events(out / "meds")
        assert ev.filter(pl.col("code").str.contains(CONTROL)).height == 0, i
        same = ev.equals(plain)  # (no frame in a failure message: patient rows)
        assert same, i
        tables = json.loads((out / "meds" / "metadata" / "etl_config.json").read_text())["tables"]
        assert tables["hosp/prescriptions"]["control_characters_removed"] == {"drug": 3}, i


def test_tabs_and_line_breaks_inside_a_value_become_one_space(mimic_demo_dir, tmp_path):
    """A quoted CSV value may hold a line break or a tab (an edit, a spreadsheet): it went into the
    code (`MEDICATION//Ac\\n\\tetaminophen`). Now it is one space with the whitespace around it, counted
    per column, and no code or text written holds a control character. VT, FF and NEL are line
    breaks too (they were refused inside a value and dropped at its end)."""
    cases = (("spaced", " "), ("broken", " \r\n\t "), ("tabbed", "\t"), ("unicode", "\u2028"),
             ("interleaved", "\t \t \n "), ("vt_ff_nel", "\x0b\x0c \x85"))
    for name, chars in cases:
        raw = _demo_copy(mimic_demo_dir, tmp_path / name, ["hosp/prescriptions"], _inserted("drug", chars))
        etl(raw, tmp_path / name / "meds", split_fractions=(1.0, 0.0, 0.0))
    spaced = _events(tmp_path / "spaced" / "meds")
    for name, _ in cases[1:]:
        ev = _events(tmp_path / name / "meds")
        assert ev.filter(pl.col("code").str.contains(CONTROL) | pl.col("text_value").str.contains(CONTROL)).height == 0
        same = ev.equals(spaced)  # the value as if written with one space (no frame in a failure: patient rows)
        assert same, name
        tables = json.loads((tmp_path / name / "meds" / "metadata" / "etl_config.json").read_text())["tables"]
        assert tables["hosp/prescriptions"]["line_breaks_set_to_space"] == {"drug": 3}
        assert tables["hosp/prescriptions"]["events_written"] == 18087



def test_no_break_spaces_and_invisible_characters_are_a_plain_space_or_nothing(mimic_demo_dir, tmp_path):
    """Text pasted from a web page, a spreadsheet or a word processor holds no-break spaces (U+00A0),
    thin or ideographic spaces, zero-width spaces, byte-order marks, soft hyphens, direction marks: each
    made a code of its own (`MEDICATION//Ac\u00a0etaminophen` beside `MEDICATION//Ac etaminophen`; one
    at a value's end: `MEDICATION//Heparin\u200b`). Now a Unicode space is one plain space with the
    spaces next to it, counted as `unicode_spaces_set_to_space`; an invisible character is removed,
    counted with the control characters; the MEDS equals the one written with a plain space (or none)."""
    def ended(chars):  # the first 3 drug values with `chars` at their end
        def edit(header, rows):
            i, done = header.index("drug"), 0
            for r in rows:
                if len(r[i]) > 2 and done < 3:
                    r[i], done = r[i] + chars, done + 1
            return rows
        return edit

    references = {"spaced": _inserted("drug", " "), "plain": _inserted("drug", "")}
    cases = {"nbsp": ("spaced", _inserted("drug", "\u00a0"), "unicode_spaces_set_to_space"),
             "mixed_spaces": ("spaced", _inserted("drug", " \u2009\u00a0 \u3000\u202f"), "unicode_spaces_set_to_space"),
             "zero_width": ("plain", _inserted("drug", "\u200b\u200d\u2060"), "control_characters_removed"),
             "bom_soft_hyphen_marks": ("plain", _inserted("drug", "\ufeff\u00ad\u200e\u202a"), "control_characters_removed"),
             "at_the_end": ("plain", ended("\u00a0\u200b"), None)}
    for name, edit in references.items():
        etl(_demo_copy(mimic_demo_dir, tmp_path / name, ["hosp/prescriptions"], edit), tmp_path / name / "meds",
            split_fractions=(1.0, 0.0, 0.0))
    invisible = r"[\u00a0\u2009\u3000\u202f\u200b\u200d\u2060\ufeff\u00ad\u200e\u202a]"
    for name, (reference, edit, counted) in cases.items():
        etl(_demo_copy(mimic_demo_dir, tmp_path / name, ["hosp/prescriptions"], edit), tmp_path / name / "meds",
            split_fractions=(1.0, 0.0, 0.0))
        ev = _events(tmp_path / name / "meds")
        assert ev.filter(pl.col("code").str.contains(invisible)).height == 0, name
        same = ev.equals(_events(tmp_path / reference / "meds"))  # (no frame in a failure message: patient rows)
        assert same, name
        table = json.loads((tmp_path / name / "meds" / "metadata" / "etl_config.json").read_text())["tables"]["hosp/prescriptions"]
        if counted:
            assert table[counted] == {"drug": 3}, name
        else:  # at a value's end, behind the zero-width space: each counted, the value trimmed after
            assert table["control_characters_removed"] == table["unicode_spaces_set_to_space"] == {"drug": 3}, name
        assert table["events_written"] == 18087



def test_dictionary_keys_and_descriptions_are_cleaned_as_event_values(mimic_demo_dir, tmp_path):
    """The dictionaries (d_labitems, d_items, d_icd_*, d_hcpcs) were read without the event tables'
    cleaning: a key holding a zero-width space or a byte-order mark matched no code (its description
    was lost), a description kept its line breaks and no-break spaces in codes.parquet, and one
    holding a NUL byte went in as it was. Now keys and descriptions are cleaned as event values are,
    and a NUL byte refuses the file, naming it, the column and how many values."""
    def edited(nul: bool):
        def edit(header, rows):
            if "label" not in header:
                return rows  # labevents as it is
            i, lab = header.index("itemid"), header.index("label")
            for n, r in enumerate(rows):
                r[i] = ("\ufeff" if n % 2 else "\u200b") + r[i]
                r[lab] = " \u200b" + r[lab].replace(" ", "\u00a0 \r\n\t", 1) + "\u200b\u00a0"
            if nul:
                rows[5][lab] += "\x00"
            return rows
        return edit

    for name, edit in (("plain", lambda header, rows: rows), ("edited", edited(False))):
        raw = _demo_copy(mimic_demo_dir, tmp_path / name, ["hosp/labevents", "hosp/d_labitems"], edit)
        etl(raw, tmp_path / name / "meds", split_fractions=(1.0, 0.0, 0.0))
    plain, got = (pl.read_parquet(tmp_path / n / "meds" / "metadata" / "codes.parquet") for n in ("plain", "edited"))
    described = plain.filter(pl.col("code").str.starts_with("LAB//") & pl.col("description").is_not_null()).height
    assert described > 200  # the demo's lab codes, described from d_labitems
    same = got.equals(plain)  # (codes and counts; no frame in a failure message)
    assert same
    raw = _demo_copy(mimic_demo_dir, tmp_path / "nul", ["hosp/labevents", "hosp/d_labitems"], edited(True))
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "nul" / "meds", split_fractions=(1.0, 0.0, 0.0))
    assert "d_labitems.csv.gz: column 'label' has 1 value holding a NUL byte" in str(e.value)
    assert not (tmp_path / "nul" / "meds").exists()


def _minus_zeros(column: str, row_id: str | None, reverse: bool):
    """An edit writing every other zero of `column` as `-0`, adding for each of the first 50 zeros a
    second row alike but for its zero's sign (`0` or `-1e-50`) (and its own row id where the table has one), and
    listing the rows reversed when `reverse`."""
    def edit(header, rows):
        i, z, twins = header.index(column), 0, []
        rid = header.index(row_id) if row_id else None
        for r in rows:
            if r[i] and float(r[i]) == 0:
                r[i] = "-0" if z % 2 else r[i]
                if z < 50:
                    twins.append(list(r))
                    twins[-1][i] = "0" if r[i] == "-0" else "-1e-50"  # -0.0 as a float32
                    if rid is not None:
                        twins[-1][rid] = str(10**9 + int(r[rid]))
                z += 1
        out = rows + twins
        return out[::-1] if reverse else out
    return edit


def test_minus_zero_is_zero_whatever_the_row_order(mimic_demo_dir, tmp_path):
    """`-0` and `0` are one value, but numeric_value kept the sign, and 0.0 and -0.0 are equal to the
    exact de-duplication: of two outputevents rows alike but for `-0`/`0` (no row id) the one listed
    first was kept, so the value written followed the file's row order; and a `-0` was written as
    -0.0. Here the real demo's labs (2,930 zero results) and ICU outputs (320), every other zero
    written `-0` and 50 of each given a twin with the other sign, are read in file order and
    reversed: both give the same bytes, no -0.0 is written, and the output twins are duplicates."""
    tables = {"hosp/labevents": ("valuenum", "labevent_id"), "icu/outputevents": ("value", None)}
    for name in ("as_read", "reversed"):
        edits = {t: _minus_zeros(c, rid, name == "reversed") for t, (c, rid) in tables.items()}
        raw = _demo_copy(mimic_demo_dir, tmp_path / name, list(tables), lambda h, r, e=edits: e[_table_of(h)](h, r))
        etl(raw, tmp_path / name / "meds", split_fractions=(1.0, 0.0, 0.0))
    a, b = (sorted((tmp_path / n / "meds" / "data").rglob("*.parquet")) for n in ("as_read", "reversed"))
    same = [p.read_bytes() == q.read_bytes() for p, q in zip(a, b, strict=True)]
    assert all(same)
    ev = _events(tmp_path / "as_read" / "meds")
    values = ev["numeric_value"].fill_null(1).to_numpy()
    minus_zero, zeros = int(((values == 0) & np.signbit(values)).sum()), int((values == 0).sum())
    labs = int(((values == 0) & ev["code"].str.starts_with("LAB//").to_numpy()).sum())
    assert (minus_zero, zeros - labs) == (0, 320)  # the output twins are one event each
    assert labs == 2930 + 50  # its own labevent_id: a lab twin is an event of its own
    tables = json.loads((tmp_path / "as_read" / "meds" / "metadata" / "etl_config.json").read_text())["tables"]
    assert tables["icu/outputevents"]["dropped"] == {"duplicate": 50}


def _table_of(header: list[str]) -> str:
    return "hosp/labevents" if "labevent_id" in header else "icu/outputevents"


def test_an_admission_listed_twice_is_not_its_own_next_admission(tmp_path):
    """A discharge written as a date on its admission day is placed at the day's end, or at the
    subject's next admission when that comes later that day. With the admission's row listed twice,
    its repeat was taken for the next admission: the discharge was placed at its own admittime
    (08:00), before the day's events, and the placement counted twice."""
    adm = ("subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,discharge_location\n"
           "1,11,2150-01-01 08:00:00,2150-01-01,,URGENT,ER,HOME\n")
    for name, rows in (("once", adm), ("twice", adm + adm.splitlines()[1] + "\n")):
        raw = _raw(tmp_path / name, {"hosp/admissions": rows})
        etl(raw, tmp_path / name / "meds", split_fractions=(1.0, 0.0, 0.0))
    ev = _events(tmp_path / "twice" / "meds")
    assert ev.filter(pl.col("code").str.starts_with("HOSPITAL_DISCHARGE"))["time"].dt.strftime("%H:%M:%S").to_list() == ["23:59:59"]
    same = ev.equals(_events(tmp_path / "once" / "meds"))
    assert same
    placed = json.loads((tmp_path / "twice" / "meds" / "metadata" / "ehrfm_etl.json").read_text())["discharge_times"]
    assert placed["date_only"] == 1


def test_a_dose_line_takes_the_same_time_whichever_of_its_ids_rows_is_listed_first(tmp_path):
    """emar_detail's dose lines take their emar row's time (by emar_seq). Two emar rows of one
    emar_seq (a re-charted administration, or a damaged export) left the dose at the time of
    whichever was listed first: the MEDS followed the rows' order. Now the later row times it (it
    was not known before), as a prescription takes the later of its pharmacy rows' times."""
    emar = ("subject_id,hadm_id,emar_id,emar_seq,poe_id,charttime,medication,event_txt\n"
            "1,11,1-5,5,1-9,2150-01-02 08:00:00,Heparin,Administered\n"
            "1,11,1-5,5,1-9,2150-01-02 09:30:00,Heparin,Administered\n")
    detail = ("subject_id,emar_id,emar_seq,parent_field_ordinal,dose_given,dose_given_unit,product_description\n"
              "1,1-5,5,1.1,5000,UNIT,Heparin 5000 Units\n")
    outs = []
    for name, flip in (("as_read", False), ("reversed", True)):
        tables = {"hosp/emar": emar, "hosp/emar_detail": detail}
        if flip:
            tables = {t: "".join([v.splitlines(True)[0], *v.splitlines(True)[1:][::-1]]) for t, v in tables.items()}
        etl(_raw(tmp_path / name, tables), tmp_path / name / "meds", split_fractions=(1.0, 0.0, 0.0))
        outs.append(_events(tmp_path / name / "meds"))
    same = outs[0].equals(outs[1])
    assert same
    dose = outs[0].filter(pl.col("code").str.starts_with("EMAR_DOSE//"))["time"].dt.strftime("%H:%M").to_list()
    assert dose == ["09:30"]


@pytest.mark.parametrize("table", ["hosp/labevents", "icu/inputevents"])
def test_an_itemid_that_is_not_a_number_is_refused(mimic_demo_dir, tmp_path, table):
    """An itemid damaged to "5x0983" became its own code (`LAB//5x0983//mEq/L`), exit 0, while a
    damaged hadm_id was refused as unparseable. itemid is an integer of MIMIC-IV's schema: refused the same
    way, naming the file, the column and the count; "50971.0" (an id column exported as float) still reads as 50971."""
    raw = _demo_copy(mimic_demo_dir, tmp_path, [table], _inserted("itemid", "x", n=2))
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    msg = str(e.value)
    assert f"{table.split('/')[1]}.csv.gz: column 'itemid' has 2 unparseable integer values" in msg, msg
    assert not (tmp_path / "meds").exists()

    def as_float(header, rows):
        i = header.index("itemid")
        for r in rows[:5]:
            r[i] += ".0"
        return rows

    raw = _demo_copy(mimic_demo_dir, tmp_path / "f", [table], as_float)
    ref = _demo_copy(mimic_demo_dir, tmp_path / "r", [table], lambda header, rows: rows)
    etl(raw, tmp_path / "meds_f", split_fractions=(1.0, 0.0, 0.0))
    etl(ref, tmp_path / "meds_r", split_fractions=(1.0, 0.0, 0.0))
    assert _events(tmp_path / "meds_f").sort(pl.all()).equals(_events(tmp_path / "meds_r").sort(pl.all()))


def test_a_dictionary_listing_one_itemid_twice_is_said(mimic_demo_dir, tmp_path, capsys):
    """An itemid listed twice in d_labitems with two labels described its code by one of them without a
    word. Now one warning line names the file, the count and the first itemid (a code, not patient data);
    rows repeated exactly say nothing."""
    import re

    def twice(changed: bool):
        def edit(header, rows):
            if "label" not in header:
                return rows  # labevents as it is
            lab = header.index("label")
            return rows + [[*r[:lab], r[lab] + (" (v2)" if changed else ""), *r[lab + 1:]] for r in rows]
        return edit

    raw = _demo_copy(mimic_demo_dir, tmp_path / "same", ["hosp/labevents", "hosp/d_labitems"], twice(False))
    etl(raw, tmp_path / "same" / "meds", split_fractions=(1.0, 0.0, 0.0))
    assert "listed more than once" not in capsys.readouterr().err
    raw = _demo_copy(mimic_demo_dir, tmp_path / "two", ["hosp/labevents", "hosp/d_labitems"], twice(True))
    etl(raw, tmp_path / "two" / "meds", split_fractions=(1.0, 0.0, 0.0))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "listed more than once" in ln]
    assert len(lines) == 1 and re.fullmatch(
        r"ehrfm: warning: .*d_labitems\.csv\.gz: \d{3} itemid value\(s\) are listed more than once with different rows "
        r"\(first: \d+\); their codes are described by the last row listed", lines[0]), lines
    codes = pl.read_parquet(tmp_path / "two" / "meds" / "metadata" / "codes.parquet")
    lab = codes.filter(pl.col("code").str.starts_with("LAB//") & pl.col("description").is_not_null())
    assert lab.height > 200 and lab["description"].str.contains(r"\(v2\)").all()
