"""The synthetic cohort's fixed "world": a catalogue of latent conditions and the long-range rules.

`tokenization.synth` draws patients from it; nothing here depends on the data seed. The catalogue
is built once from `WORLD_SEED`, so every synthetic cohort shares the same medical facts (which
code goes with which lab, drug and risk), the way every hospital shares one medicine.

Latent conditions (the quanta of Michaud et al. 2023, "The Quantization Model of Neural Scaling"):
- `N_CONDITIONS` conditions in all. Ranks 1-8 are the clinical head kept from the first version
  of the generator (heart failure, COPD, CKD, diabetes, ...; `tokenization.synth.CONDITIONS`).
  Ranks 9..N are the tail built here: a patient has the tail condition of rank r with probability
  p_r = `TAIL_P9` * (r / 9) ** -`ZIPF_EXPONENT` (times a per-patient multimorbidity factor of mean 1),
  so the share of patients with each condition falls as a power law of its rank. When the
  frequencies of discrete skills follow a power law, a model's loss falls as a power law in its
  size and data (Michaud et al.): each extra rank learned is a smaller, rarer gain.
- Each tail condition belongs to a family: one real ICD-10-CM category (`FAMILIES`), whose members
  share the first three characters of their code (the hierarchical tokenizer's category token),
  one lab shift and one drug. Each member adds its own code suffix, often a lab shift of its own,
  its own drug, an acute problem it makes likelier, and effects on severity (the logit of
  in-hospital death, which also drives ICU, admission type and discharge), length of stay, ICU
  transfer and the time to the next admission.
- Kinds: `chronic` (present from its onset admission on, coded at each admission with
  probability 0.7; its severity effect grows from half to full over the first two years after
  onset) and `episodic` (one event, coded at its onset admission only; at that stay it adds
  `sev_event`, and at every later stay `sev_remote` * exp(-years since / `tau_years`)).

Long-range rules (`LONG_RANGE_RULES`): events of earlier stays change the risk of later ones,
decaying with the time since or persisting, so that the order and timing of a long history
matter beyond what counts of codes show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _table(name: str) -> list[tuple[str, ...]]:
    """The rows of tokenization/data/<name> (tab-separated, a header line, every field a string)."""
    lines = (Path(__file__).parent / "data" / name).read_text(encoding="utf-8").splitlines()
    return [tuple(line.split("\t")) for line in lines[1:]]


WORLD_SEED = 20261130
N_CONDITIONS = 400  # head (8) + tail
N_HEAD = 8
ZIPF_EXPONENT = 1.1  # close to the ~1 exponent of diagnosis-code frequencies in real EHRs
TAIL_P9 = 0.05  # prevalence of the most frequent tail condition (rank 9)
P_CHRONIC = 0.7
P_CODE_CHRONIC = 0.7  # a present chronic condition is coded at an admission with this probability
P_OWN_MED = 0.75  # its own drug is ordered at an admission where it is active
P_FAMILY_MED = 0.5

# Real ICD-10-CM categories (3 characters) and their titles; members get a 1-2 character suffix.
FAMILIES = _table("icd10_families.tsv")
QUALIFIERS = [
    "unspecified", "other specified", "with complication", "without complication", "acute", "chronic",
    "recurrent", "in remission", "mild", "moderate", "severe", "left side", "right side", "bilateral",
    "initial episode", "subsequent episode", "with hemorrhage", "with obstruction", "due to drug", "late onset",
]
# Drugs the tail conditions trigger: (name, dose, unit, route), as in hosp/prescriptions.
DRUG_POOL = _table("drugs.tsv")

# (rule, trigger, effect, time course); applied in tokenization.synth._admission_course.
LONG_RANGE_RULES = [
    dict(name="prior_mi", trigger="acute problem 'mi' at an earlier admission",
         effect={"severity": 0.9}, time_course="exp(-years since / 2.0)",
         modifier="x 0.35 when that stay had PCI (ICD-10-PCS 027034Z, revascularisation)"),
    dict(name="prior_sepsis", trigger="acute problem 'sepsis' at an earlier admission",
         effect={"severity": 0.7, "log_gap_to_next_admission": -0.5}, time_course="exp(-years since / 1.0)"),
    dict(name="prior_hip_fracture", trigger="acute problem 'hip_fracture' at an earlier admission",
         effect={"severity": 0.6, "log_los": 0.25}, time_course="persistent"),
    dict(name="tail_episodic", trigger="an episodic tail condition's event at an earlier admission",
         effect={"severity": "sev_remote of the condition"}, time_course="exp(-years since / tau_years)"),
    dict(name="tail_chronic_progression", trigger="a chronic tail condition since its onset admission",
         effect={"severity": "sev of the condition"}, time_course="x (0.5 + 0.5 * min(1, years since onset / 2))"),
    dict(name="frailty_accumulation", trigger="every earlier admission",
         effect={"frailty": 0.15}, time_course="persistent (frailty enters severity with weight 0.7)"),
]
RULE_TAU_YEARS = {"prior_mi": 2.0, "prior_sepsis": 1.0}


def build_tail(labs: list[tuple], n_acute: int, reserved_codes: set[str], existing_drugs: set[str]) -> dict:
    """The tail catalogue as arrays (index j = rank 9 + j), from `WORLD_SEED` alone."""
    rng = np.random.default_rng(WORLD_SEED)
    n = N_CONDITIONS - N_HEAD
    n_lab = len(labs)
    # Routine labs (drawn at every blood draw: BMP and CBC) are likelier signatures than panel labs.
    routine = {"Sodium", "Potassium", "Chloride", "Bicarbonate", "Urea Nitrogen", "Creatinine", "Glucose",
               "White Blood Cells", "Hemoglobin", "Platelet Count"}
    lab_w = np.array([3.0 if lab[1] in routine else 1.0 for lab in labs])
    lab_w /= lab_w.sum()
    drugs = [d for d in DRUG_POOL if d[0] not in existing_drugs]
    n_fam = len(FAMILIES)
    fam_lab = rng.choice(n_lab, n_fam, p=lab_w)
    fam_lab_eff = rng.choice([-1.0, 1.0], n_fam) * rng.uniform(0.8, 2.0, n_fam)
    fam_drug = rng.integers(0, len(drugs), n_fam)

    family = rng.integers(0, n_fam, n)
    rank = N_HEAD + 1 + rng.permutation(n)  # ranks are shuffled across families
    suffixes = [str(d) for d in range(10)] + [f"{d:02d}" for d in range(100)]
    used: dict[int, int] = {}
    code, title = [], []
    for j in range(n):
        f = family[j]
        k = used.get(f, 0)
        used[f] = k + 1
        while True:
            c = FAMILIES[f][0] + suffixes[rng.integers(0, len(suffixes))]
            if c not in reserved_codes:
                break
        reserved_codes.add(c)
        q = QUALIFIERS[k % len(QUALIFIERS)] + (f", type {k // len(QUALIFIERS) + 1}" if k >= len(QUALIFIERS) else "")
        code.append(c)
        title.append(f"{FAMILIES[f][1]}, {q}")
    chronic = rng.random(n) < P_CHRONIC
    own_lab = np.where(rng.random(n) < 0.6, rng.choice(n_lab, n, p=lab_w), -1)
    own_lab_eff = rng.choice([-1.0, 1.0], n) * rng.uniform(1.0, 2.5, n)
    return dict(
        rank=rank, family=family, code=np.array(code), title=title, chronic=chronic,
        prevalence=TAIL_P9 * (rank / (N_HEAD + 1)) ** -ZIPF_EXPONENT,
        tau_years=np.where(chronic, np.inf, np.clip(rng.lognormal(np.log(1.5), 0.6, n), 0.3, 8.0)),
        sev=rng.normal(0.15, 0.25, n),  # chronic: while present; episodic: at its event stay (sev_event)
        sev_event=rng.normal(0.5, 0.3, n),
        sev_remote=rng.normal(0.3, 0.3, n),
        los=rng.normal(0.0, 0.15, n), icu=rng.normal(0.0, 0.3, n), readmit=rng.normal(-0.1, 0.2, n),
        acute=rng.integers(0, n_acute, n), acute_boost=rng.uniform(0.3, 1.2, n),
        fam_lab=fam_lab, fam_lab_eff=fam_lab_eff * rng.uniform(0.6, 1.0, n_fam), fam_drug=fam_drug,
        own_lab=own_lab, own_lab_eff=own_lab_eff, own_drug=rng.integers(0, len(drugs), n), drugs=drugs,
    )


def ground_truth(tail: dict, head: list[tuple], acute: list[tuple], labs: list[tuple]) -> dict:
    """What a model can learn from the synthetic cohort, as JSON.

    The conditions (ranks, prevalences, kinds, codes, signatures, effects), the Zipf law and the
    long-range rules.
    """
    drugs = tail["drugs"]
    conds = [dict(rank=i + 1, name=c[0], code=c[1], title=c[2], kind="chronic (head)",
                  prevalence=f"sigmoid({c[3]:.2f} + 0.035 (age - 62) + 0.4 frailty + 0.6 z)",
                  effects={"severity": c[4]}) for i, c in enumerate(head)]
    order = np.argsort(tail["rank"])
    for j in order.tolist():
        f = int(tail["family"][j])
        labs_j = {labs[int(tail["fam_lab"][f])][1]: round(float(tail["fam_lab_eff"][f]), 3)}
        if tail["own_lab"][j] >= 0:
            name = labs[int(tail["own_lab"][j])][1]
            labs_j[name] = round(labs_j.get(name, 0.0) + float(tail["own_lab_eff"][j]), 3)
        chronic = bool(tail["chronic"][j])
        eff = {"log_los": round(float(tail["los"][j]), 3), "icu_logit": round(float(tail["icu"][j]), 3),
               "log_gap_to_next_admission": round(float(tail["readmit"][j]), 3)}
        if chronic:
            eff["severity"] = round(float(tail["sev"][j]), 3)
        else:
            eff["severity_at_event"] = round(float(tail["sev_event"][j]), 3)
            eff["severity_remote"] = round(float(tail["sev_remote"][j]), 3)
        conds.append(dict(
            rank=int(tail["rank"][j]), name=f"tail_{int(tail['rank'][j])}", code=str(tail["code"][j]),
            title=tail["title"][j], family=FAMILIES[f][0], kind="chronic" if chronic else "episodic",
            prevalence=float(f"{tail['prevalence'][j]:.6g}"),
            tau_years=None if chronic else round(float(tail["tau_years"][j]), 3),
            lab_shift_sd=labs_j, drugs=[drugs[int(tail["own_drug"][j])][0], drugs[int(tail["fam_drug"][f])][0]],
            acute_problem={acute[int(tail["acute"][j])][0]: round(float(tail["acute_boost"][j]), 3)},
            effects=eff))
    return {
        "generator": "ehrfm.tokenization.synth",
        "world_seed": WORLD_SEED,
        "reference": "Michaud et al. 2023, The Quantization Model of Neural Scaling (power-law quanta frequencies)",
        "zipf": {"exponent": ZIPF_EXPONENT, "p_rank_9": TAIL_P9, "ranks": [N_HEAD + 1, N_CONDITIONS],
                 "law": "P(patient has condition of rank r) = p_rank_9 * (r / 9) ** -exponent * m, "
                        "m = exp(0.5 z - 0.125) a per-patient multimorbidity factor (E m = 1), z ~ N(0, 1)"},
        "coding": {"chronic_per_admission": P_CODE_CHRONIC, "episodic_at_event": 1.0,
                   "own_drug": P_OWN_MED, "family_drug": P_FAMILY_MED,
                   "onset": "first admission with probability 0.5, else admission 2-5 (never, if the patient has fewer)"},
        "severity": "logit of in-hospital death; ICU logit = 1.6 severity + 2.3 (+ icu effects); "
                    "log LOS = 1.2 + 0.3 (severity + 2.5) + 0.4 icu (+ log_los effects)",
        "long_range_rules": LONG_RANGE_RULES,
        "conditions": conds,
    }
