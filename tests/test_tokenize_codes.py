"""Hierarchical vs flat code tokens (`ehrfm tokenize --codes`): the ETHOS-style split of ICD codes,
fallback to the nearest frequent ancestor, the mode kept by a reused tokenizer, per-event stats,
and the real demo's UNK rate halved (issue 12)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import numpy as np
import pytest
from test_tokenize import _write_meds

from ehrfm.errors import UserError
from ehrfm.tokens import TokenDir
from tokenization.hierarchy import code_parts
from tokenization.tokenize import fit_vocab, tokenize

T0 = dt.datetime(2150, 3, 1, 8, 0)
DX10 = "DIAGNOSIS//ICD//10//"


def test_icd10cm_splits_as_ethos_category_then_the_rest():
    chain, rest = code_parts(DX10 + "S72.001A", "hierarchical")  # a dot from another ETL is ignored
    assert chain[:2] == [DX10 + "S72", DX10 + "CHAPTER//S00-T88"]
    assert rest == [DX10 + "3-6//001", DX10 + "SFX//A"]
    assert code_parts(DX10 + "I219", "hierarchical")[1] == [DX10 + "3-6//9"]
    assert code_parts(DX10 + "I10", "hierarchical") == (
        [DX10 + "I10", DX10 + "CHAPTER//I00-I99", DX10 + "*", "DIAGNOSIS//ICD//*", "DIAGNOSIS//*"], [])
    # Chapter edges: D49 ends chapter 2, D50 opens chapter 3; O9A is in chapter 15.
    assert code_parts(DX10 + "D496", "hierarchical")[0][1] == DX10 + "CHAPTER//C00-D49"
    assert code_parts(DX10 + "D509", "hierarchical")[0][1] == DX10 + "CHAPTER//D50-D89"
    assert code_parts(DX10 + "O9A111", "hierarchical")[0][1] == DX10 + "CHAPTER//O00-O9A"
    # Another ETL's prefix is split the same way.
    assert code_parts("ED_DIAGNOSIS//ICD//10//R079", "hierarchical")[0][0] == "ED_DIAGNOSIS//ICD//10//R07"


def test_icd9_and_procedure_codes_split_by_their_own_hierarchy():
    dx9 = "DIAGNOSIS//ICD//9//"
    assert code_parts(dx9 + "4019", "hierarchical") == (
        [dx9 + "401", dx9 + "CHAPTER//390-459", dx9 + "*", "DIAGNOSIS//ICD//*", "DIAGNOSIS//*"], [dx9 + "SUB//9"])
    assert code_parts(dx9 + "E8497", "hierarchical")[0][:2] == [dx9 + "E849", dx9 + "CHAPTER//E000-E999"]
    assert code_parts(dx9 + "V5861", "hierarchical")[1] == [dx9 + "SUB//61"]
    px9 = "PROCEDURE//ICD//9//"
    assert code_parts(px9 + "3893", "hierarchical") == (
        [px9 + "38", px9 + "CHAPTER//35-39", px9 + "*", "PROCEDURE//ICD//*", "PROCEDURE//*"], [px9 + "SUB//93"])
    px10 = "PROCEDURE//ICD//10//"
    chain, rest = code_parts(px10 + "0DTJ4ZZ", "hierarchical")
    assert chain[0] == px10 + "1//0" and rest == [px10 + f"{k}//{c}" for k, c in enumerate("DTJ4ZZ", start=2)]
    # Codes that do not parse, and every non-ICD code, fall back along their // path.
    assert code_parts(px10 + "0DT", "hierarchical")[0] == [px10 + "0DT", px10 + "*", "PROCEDURE//ICD//*", "PROCEDURE//*"]
    assert code_parts("LAB//50912//mg/dL", "hierarchical") == (["LAB//50912//mg/dL", "LAB//50912//*", "LAB//*"], [])
    assert code_parts("MEDS_DEATH", "hierarchical") == (["MEDS_DEATH"], [])
    assert code_parts(dx9 + "4019", "flat") == ([dx9 + "4019"], [])
    with pytest.raises(ValueError, match="unknown code mode"):
        code_parts("X", "bpe")


def test_vocab_is_fitted_bottom_up_on_the_hierarchy():
    counts = {"LAB//1//u": 5, "LAB//2//u": 6, "LAB//3//u": 20, "MEDICATION//A": 3,
              DX10 + "I219": 12, DX10 + "I2101": 4, DX10 + "I2102": 4}
    heads, cont = fit_vocab(counts, "hierarchical", min_count=10)
    # Rare labs pool into LAB//* (5 + 6 events); the lone rare medication has no kept ancestor.
    assert heads == {"LAB//3//u": 20, "LAB//*": 11, DX10 + "I21": 20}
    # 3-6//9 carried by 12 events is kept; 3-6//01 and 3-6//02 (4 each) are not.
    assert cont == {DX10 + "3-6//9": 12}
    assert fit_vocab(counts, "flat", min_count=10) == ({"LAB//3//u": 20, DX10 + "I219": 12}, {})


def test_a_rare_outcome_code_falls_back_to_its_family_never_to_unk():
    """An ICU admission to a rare unit (the MIMIC-IV demo's Neuro SICU: 3 in train) was UNK, so no zero-shot rollout
    could reach it as the ICU-admission outcome (a helper). In hierarchical mode (the default) an outcome family's
    root is kept for any event reaching it; other families keep min_count."""
    counts = {"ICU_ADMISSION//MICU": 50, "ICU_ADMISSION//Neuro SICU": 3, "HOSPITAL_DISCHARGE//HOME": 40,
              "MEDS_DEATH": 4, "LAB//7//u": 3, "TRANSFER_TO//x": 2, "AGE//0-4": 50, "AGE//5-9": 30}
    # a code named as a special token (AGE//0-4) is never kept, its events counting for its parent (AGE//*)
    for mode in ("hierarchical", "flat"):
        heads, _ = fit_vocab(counts, mode, min_count=10)
        expected = {"ICU_ADMISSION//MICU": 50, "HOSPITAL_DISCHARGE//HOME": 40, "MEDS_DEATH": 4}
        # hierarchical: the rare unit falls back to its family's root; flat mode is DESIGN.md's (rare codes are UNK)
        if mode == "hierarchical":
            expected.update({"ICU_ADMISSION//*": 3, "AGE//*": 80})
        else:
            del expected["MEDS_DEATH"]
        assert heads == expected, mode


def _subject(sid, codes):
    rows = [(sid, None, "GENDER//M", None), (sid, dt.datetime(2100, 1, 1), "MEDS_BIRTH", None)]
    return rows + [(sid, T0 + dt.timedelta(minutes=i), c, v) for i, (c, v) in enumerate(codes)]


@pytest.fixture()
def icd_meds(tmp_path):
    train = []
    for i in range(10):
        train += _subject(i, [(DX10 + "I219", None), ("LAB//1//u", float(i)), (f"LAB//{100 + i}//u", 1.0),
                              (DX10 + f"I{30 + i}0", None), ("PROCEDURE//ICD//10//0DTJ4ZZ", None)])
    # Each I3x category is seen once: together they keep their chapter token (10 events).
    # Seen once in train: category I21 known, 3-6//09 too rare.
    train += _subject(10, [(DX10 + "I2109", None)])
    return _write_meds(tmp_path / "meds", {
        "train": train,
        # Unseen in train: I22 (rare category -> chapter), a new lab (-> LAB//*), I2190 (3-6//90 unknown).
        "tuning": _subject(20, [(DX10 + "I219", None), (DX10 + "I221", None), ("LAB//999//u", 5.0),
                                ("LAB//1//u", 100.0), (DX10 + "I2190", None), ("RARE", None)]),
    })


def test_hierarchical_tokens_on_a_hand_made_dataset(icd_meds, tmp_path):
    res = tokenize(icd_meds, tmp_path / "h", min_count=10)
    td = TokenDir(tmp_path / "h")
    assert td.tokenizer["codes"] == "hierarchical" and td.config["codes"] == "hierarchical"
    px = "PROCEDURE//ICD//10//"
    assert td.decode(td.split("tuning").subject(0)[0]) == [
        "TIMELINE_START", "GENDER//M", "AGE//50-54",
        DX10 + "I21", DX10 + "3-6//9",           # exact: category + the rest
        DX10 + "CHAPTER//I00-I99",               # I22 never seen: its chapter
        "LAB//*",                                # an unseen lab: no Q (its values are no known lab's)
        "LAB//1//u", "Q10",                      # a frequent lab keeps item + quantile
        DX10 + "I21",                            # I2190: 3-6//90 unknown, truncated at the category
        "UNK",                                   # no ancestor at all
        "TIMELINE_END",
    ]
    train = td.decode(td.split("train").subject(0)[0])
    assert train[3:6] == [DX10 + "I21", DX10 + "3-6//9", "LAB//1//u"]
    assert train[-8:-1] == [px + "1//0"] + [px + f"{k}//{c}" for k, c in enumerate("DTJ4ZZ", start=2)]
    assert set(td.tokenizer["continuation_tokens"]) == {DX10 + "3-6//9"} | {px + f"{k}//{c}" for k, c in enumerate("DTJ4ZZ", 2)}
    tun = res["splits"]["tuning"]
    assert (tun["code_events"], tun["unk_events"], tun["coarsened_events"]) == (7, 1, 3)
    assert tun["code_tokens"] == 8 and tun["tokens"] == 12
    assert tun["unk_fraction"] == pytest.approx(1 / 7, abs=1e-6)

    res_flat = tokenize(icd_meds, tmp_path / "f", min_count=10, codes="flat")
    flat = TokenDir(tmp_path / "f")
    assert flat.tokenizer["codes"] == "flat"
    assert flat.decode(flat.split("tuning").subject(0)[0])[3:-1] == [
        DX10 + "I219", "UNK", "UNK", "LAB//1//u", "Q10", "UNK", "UNK"]
    assert res_flat["splits"]["tuning"]["unk_events"] == 4 and res_flat["splits"]["tuning"]["coarsened_events"] == 0
    # Train: the 10 one-off labs, 10 one-off I3x0 and the once-seen I2109 are UNK when flat, kept
    # at a coarser level when hierarchical.
    assert res_flat["splits"]["train"]["unk_events"] == 21 and res["splits"]["train"]["unk_events"] == 0
    assert res["splits"]["train"]["coarsened_events"] == 21


def test_a_reused_tokenizer_keeps_its_mode_and_old_files_load_as_flat(icd_meds, tmp_path):
    tokenize(icd_meds, tmp_path / "f", min_count=10, codes="flat")
    tokenize(icd_meds, tmp_path / "again", tokenizer=tmp_path / "f/tokenizer.json")  # no --codes: its own mode
    again = TokenDir(tmp_path / "again")
    assert again.config["codes"] == "flat" and again.fingerprint == TokenDir(tmp_path / "f").fingerprint
    assert np.array_equal(again.split("tuning").tokens, TokenDir(tmp_path / "f").split("tuning").tokens)
    with pytest.raises(UserError, match="splits codes flat, not hierarchical"):
        tokenize(icd_meds, tmp_path / "x", tokenizer=tmp_path / "f/tokenizer.json", codes="hierarchical")
    assert not (tmp_path / "x").exists()

    # A tokenizer.json written before the "codes" key existed (version 1) applies as flat.
    old = json.loads((tmp_path / "f/tokenizer.json").read_text())
    del old["codes"], old["continuation_tokens"]
    old["version"] = 1
    (tmp_path / "old.json").write_text(json.dumps(old))
    tokenize(icd_meds, tmp_path / "o", tokenizer=tmp_path / "old.json")
    assert TokenDir(tmp_path / "o").config["codes"] == "flat"
    assert np.array_equal(TokenDir(tmp_path / "o").split("tuning").tokens, TokenDir(tmp_path / "f").split("tuning").tokens)

    old["codes"] = "bpe"
    (tmp_path / "bad.json").write_text(json.dumps(old))
    with pytest.raises(UserError, match=r"bad\.json: key 'codes' is 'bpe'"):
        tokenize(icd_meds, tmp_path / "b", tokenizer=tmp_path / "bad.json")


def test_cli_codes_flag(icd_meds, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "ehrfm", "tokenize", str(icd_meds), *a],  # noqa: E731
                                    capture_output=True, text=True)
    p = run("--out", str(tmp_path / "f"), "--codes", "flat")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "f/stats.json").read_text())["codes"] == "flat"
    p = run("--out", str(tmp_path / "h"), "--tokenizer", str(tmp_path / "f/tokenizer.json"), "--codes", "hierarchical")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "not hierarchical" in p.stderr
    assert not (tmp_path / "h").exists()


def test_real_demo_hierarchical_halves_the_unk_fraction(demo_meds, tmp_path):
    flat = tokenize(demo_meds, tmp_path / "flat", codes="flat")["splits"]["train"]
    hier = tokenize(demo_meds, tmp_path / "hier")["splits"]["train"]
    assert flat["code_events"] == hier["code_events"] > 100_000
    assert flat["unk_fraction"] > 0.03  # the measurement: 4.1% of the demo's train events
    assert hier["unk_fraction"] <= flat["unk_fraction"] / 2
    assert hier["code_tokens"] > hier["code_events"]  # ICD codes take several tokens
    td = TokenDir(tmp_path / "hier")
    assert td.tokenizer["codes"] == "hierarchical"
    for prefix in ("DIAGNOSIS//ICD//10//CHAPTER//", "DIAGNOSIS//ICD//10//3-6//", "PROCEDURE//ICD//10//1//"):
        assert td.token_ids_with_prefix(prefix)


def test_codes_named_as_special_tokens_are_named_not_blamed_on_rarity(tmp_path, capsys):
    """Before: MEDS codes "Q1", "TIMELINE_END" (160 train events each) became UNK, their values lost,
    and the UNK warning said their codes were "rare or absent in train". Special tokens are never a
    code's token (a code "Q1" must not read as a decile): now each clashing code is named with its count."""
    train = []
    for i in range(12):
        train += _subject(i, [("Q1", 2.0), ("TIMELINE_END", None), ("LAB//1//u", float(i)), ("AGE//0-4", None)])
    meds = _write_meds(tmp_path / "meds", {"train": train})
    tokenize(meds, tmp_path / "tok", min_count=10)
    said = [line for line in capsys.readouterr().err.splitlines() if "special tokens" in line]
    assert len(said) == 1, said
    assert "3 MEDS code(s) of the train split name ehrfm's special tokens" in said[0]
    assert "AGE//0-4 (12 events), Q1 (12 events), TIMELINE_END (12 events)" in said[0]
    td = TokenDir(tmp_path / "tok")
    assert "LAB//1//u" in td.tokenizer["vocab"]
    # the subject's own TIMELINE_END closes its timeline once; its code "TIMELINE_END" is UNK
    assert td.decode(td.split("train").subject(0)[0]).count("TIMELINE_END") == 1
    tokenize(meds, tmp_path / "flat", min_count=10, codes="flat")
    assert "3 MEDS code(s)" in capsys.readouterr().err
