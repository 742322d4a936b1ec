"""How one MEDS code becomes event tokens: `flat` (one token per code) or `hierarchical` (the seed's).

    chain, rest = code_parts("DIAGNOSIS//ICD//10//S72001A", "hierarchical")
    chain == ["DIAGNOSIS//ICD//10//S72", "DIAGNOSIS//ICD//10//CHAPTER//S00-T88",
              "DIAGNOSIS//ICD//10//*", "DIAGNOSIS//ICD//*", "DIAGNOSIS//*"]
    rest == ["DIAGNOSIS//ICD//10//3-6//001", "DIAGNOSIS//ICD//10//SFX//A"]

A code's event is its *head* token, the first element of `chain` that the fitted vocabulary
holds, then, only when that head is `chain[0]`, the `rest` tokens in order up to the first one the
vocabulary lacks (ETHOS truncates a multi-token code at its first out-of-vocabulary part in the
same way). No head in the vocabulary: the event is `UNK`. `chain` runs from the most specific to
the most general level, so a rare code falls back to its nearest frequent ancestor instead of
`UNK`; every element's successor depends on that element only, so the chains form a tree (the
vocabulary is fitted bottom-up on it, tokenization.tokenize.fit_tokenizer).

Hierarchical mode (after ETHOS, Renc et al. 2024, whose MIMIC-IV tokenizer the seed study used):
- ICD-10-CM diagnoses `...//ICD//10//<code>` (dots ignored): category (characters 1-3), then
  `3-6//<characters 4-6>` and `SFX//<character 7>` when present, as ETHOS splits them (ETHOS
  names the category by its description; here it keeps its code). A rare category falls back to
  its chapter (`CHAPTER//I00-I99`, the 22 ICD-10-CM chapters).
- ICD-9-CM diagnoses: category (3 characters, 4 for E codes), then `SUB//<the rest>`; chapter
  fallback over the 19 ICD-9-CM chapters (001-139 ... 800-999, V, E). ETHOS maps ICD-9 to ICD-10
  with a GEM table that no dependency ships offline; ICD-9 keeps its own hierarchy here instead.
- ICD-9 procedures `PROCEDURE...//ICD//9//<code>`: category (2 digits), then `SUB//<the rest>`;
  chapter fallback over the 18 chapters of volume 3 (00, 01-05, ..., 87-99).
- ICD-10-PCS procedures (7 characters): one token per character, as ETHOS does, named by its
  position (`1//0`, `2//D`, ..., `7//Z`): a character's meaning (section, body system, root
  operation, body part, approach, device, qualifier) depends on its position.
- Every other code (labs and vitals `LAB//<item>//<unit>` with their quantile token, medications
  `MEDICATION//<drug>`, admissions, ...) stays one token, its code string; a rare one falls back
  along its `//` path: `LAB//51234//mg/dL` -> `LAB//51234//*` -> `LAB//*`. No offline drug ->
  ATC mapping ships in a dependency we can take, so medications keep their drug names.
A code is a diagnosis or a procedure by its first `//` component (one containing "PROCEDURE" is
a procedure), so other ETLs' prefixes (`ED_DIAGNOSIS//ICD//10//...`) are split the same way. An
ICD code that does not parse (wrong length or characters) is treated as any other code.

Flat mode: chain = [code], rest = []: one token per code, rare codes -> `UNK` (ehrfm <= 0.1).
"""

from __future__ import annotations

import re

FLAT = "flat"
HIERARCHICAL = "hierarchical"
CODE_MODES = (HIERARCHICAL, FLAT)
MAX_PARTS = 7  # tokens one event's code may take (ICD-10-PCS: 7 characters)
ANY = "*"  # the last `//` component of a fallback ancestor: "some code under this prefix"

# (first category, last category, chapter name); categories compare as strings within a range.
ICD10CM_CHAPTERS = [
    ("A00", "B99"), ("C00", "D49"), ("D50", "D89"), ("E00", "E89"), ("F01", "F99"), ("G00", "G99"),
    ("H00", "H59"), ("H60", "H95"), ("I00", "I99"), ("J00", "J99"), ("K00", "K95"), ("L00", "L99"),
    ("M00", "M99"), ("N00", "N99"), ("O00", "O9A"), ("P00", "P96"), ("Q00", "Q99"), ("R00", "R99"),
    ("S00", "T88"), ("U00", "U85"), ("V00", "Y99"), ("Z00", "Z99"),
]
ICD9CM_CHAPTERS = [
    (1, 139), (140, 239), (240, 279), (280, 289), (290, 319), (320, 389), (390, 459), (460, 519),
    (520, 579), (580, 629), (630, 679), (680, 709), (710, 739), (740, 759), (760, 779), (780, 799),
    (800, 999),
]
ICD9PROC_CHAPTERS = [
    (0, 0), (1, 5), (6, 7), (8, 16), (17, 17), (18, 20), (21, 29), (30, 34), (35, 39), (40, 41),
    (42, 54), (55, 59), (60, 64), (65, 71), (72, 75), (76, 84), (85, 86), (87, 99),
]

_ICD = re.compile(r"^(?P<prefix>[^/]+(?://[^/]+)*//ICD//(?P<version>9|10))//(?P<code>[^/]+)$")
_ICD10CM = re.compile(r"^[A-Z][0-9][0-9A-Z][0-9A-Z]{0,4}$")
_ICD10PCS = re.compile(r"^[0-9A-HJ-NP-Z]{7}$")
_ICD9CM = re.compile(r"^(?:[0-9]{3}[0-9]{0,2}|V[0-9]{2}[0-9]{0,2}|E[0-9]{3}[0-9]?)$")
_ICD9PROC = re.compile(r"^[0-9]{2}[0-9]{0,2}$")


def ancestors(code: str) -> list[str]:
    """The `//`-path fallbacks of a code, most specific first: "A//B//C" -> ["A//B//*", "A//*"]."""
    parts = code.split("//")
    if parts[-1] == ANY:
        parts = parts[:-1]
    return [f"{'//'.join(parts[:k])}//{ANY}" for k in range(len(parts) - 1, 0, -1)]


def _icd10cm_chapter(category: str) -> str | None:
    for lo, hi in ICD10CM_CHAPTERS:
        if lo <= category <= hi:
            return f"{lo}-{hi}"
    return None


def _number_chapter(n: int, chapters, width: int) -> str:
    for lo, hi in chapters:
        if lo <= n <= hi:
            return f"{lo:0{width}d}-{hi:0{width}d}" if lo != hi else f"{lo:0{width}d}"
    raise AssertionError(n)  # the ranges cover every value the patterns admit


def _icd_parts(prefix: str, version: str, code: str) -> tuple[list[str], list[str]] | None:
    """(specific levels of chain, rest) of an ICD code, None when it does not parse."""
    procedure = "PROCEDURE" in prefix.split("//")[0]
    p = prefix + "//"
    if version == "10" and procedure:
        if not _ICD10PCS.match(code):
            return None
        return [f"{p}1//{code[0]}"], [f"{p}{k + 1}//{c}" for k, c in enumerate(code[1:], start=1)]
    if version == "10":
        if not _ICD10CM.match(code):
            return None
        cat, mid, sfx = code[:3], code[3:6], code[6:]
        chapter = _icd10cm_chapter(cat)
        chain = [p + cat] + ([f"{p}CHAPTER//{chapter}"] if chapter else [])
        return chain, [t for t, s in ((f"{p}3-6//{mid}", mid), (f"{p}SFX//{sfx}", sfx)) if s]
    if procedure:
        if not _ICD9PROC.match(code):
            return None
        cat, sub = code[:2], code[2:]
        chain = [p + cat, f"{p}CHAPTER//{_number_chapter(int(cat), ICD9PROC_CHAPTERS, 2)}"]
        return chain, [f"{p}SUB//{sub}"] if sub else []
    if not _ICD9CM.match(code):
        return None
    n_cat = 4 if code[0] == "E" else 3
    cat, sub = code[:n_cat], code[n_cat:]
    if code[0] in "VE":
        chapter = "V01-V91" if code[0] == "V" else "E000-E999"
    else:
        chapter = _number_chapter(int(cat), ICD9CM_CHAPTERS, 3)
    return [p + cat, f"{p}CHAPTER//{chapter}"], [f"{p}SUB//{sub}"] if sub else []


def code_parts(code: str, mode: str) -> tuple[list[str], list[str]]:
    """The token candidates of one MEDS code (see the module docstring).

    Args:
        code: a MEDS code string, e.g. "DIAGNOSIS//ICD//10//I5022" or "LAB//50912//mg/dL".
        mode: "hierarchical" or "flat".

    Returns:
        (chain, rest): chain, the head candidates from the most specific to the most general
        (at least one element, the first may equal `code`); rest, the tokens that follow the
        head when the head is chain[0] (at most MAX_PARTS - 1 of them).

    Raises:
        ValueError: an unknown mode.
    """
    if mode == FLAT:
        return [code], []
    if mode != HIERARCHICAL:
        raise ValueError(f"unknown code mode {mode!r} (expected one of {', '.join(CODE_MODES)})")
    m = _ICD.match(code)
    if m:
        # Dots, letter case and surrounding spaces (a PostgreSQL CHAR(7) export) are not part of the code.
        parsed = _icd_parts(m["prefix"], m["version"], m["code"].replace(".", "").strip().upper())
        if parsed is not None:
            chain, rest = parsed
            top = f"{m['prefix']}//{ANY}"
            return chain + [top] + ancestors(top), rest
    return [code] + ancestors(code), []
