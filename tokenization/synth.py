"""Synthetic MIMIC-IV 2.2: the built-in default data for the demo and the tests.

`synthesize(out, n_patients, seed)` writes hosp/ and icu/ `.csv.gz` tables with the real MIMIC-IV
2.2 file names, columns and value formats (patients, admissions, transfers, diagnoses_icd,
procedures_icd, labevents, prescriptions, d_labitems, d_icd_diagnoses, d_icd_procedures;
icu/icustays, chartevents, d_items), so the ETL cannot tell it from the real thing.

The generative story (why outcomes are predictable, why longer context helps, why scale pays):
- Each patient has a frailty score and latent conditions. The head of the distribution is eight
  common chronic conditions (heart failure, COPD, CKD, diabetes, cirrhosis, cancer, hypertension,
  atrial fibrillation). Conditions begin at some admission and persist; each admission codes a
  present condition only with probability 0.7, so the evidence for them is spread over earlier
  admissions.
- The tail: 392 more latent conditions (ranks 9-400, `tokenization.synth_world`) whose prevalence
  falls as a power of their rank, p_r = 0.05 (r / 9) ** -1.1 (Zipf; the quantization model of
  Michaud et al. 2023 links power-law frequencies of discrete skills to power-law scaling). Each
  has a fixed signature: an ICD-10-CM code in a real category shared with its family (so the
  hierarchical tokenizer's category token is shared), lab shifts (its family's and often its
  own), drugs (its own and its family's), an acute problem it makes likelier, and effects on
  severity, length of stay, ICU transfer and time to readmission. Chronic ones persist and grow
  in severity over two years; episodic ones are one event whose risk decays over years.
- Every admission has an acute problem (sepsis, pneumonia, MI, GI bleed, AKI, ...), chosen
  more often when a related condition is present, and a severity (the logit of in-hospital
  death) driven by frailty, age, conditions, acute problem, the number of earlier admissions and
  long-range rules: an MI in an earlier stay raises risk, decaying over ~2 years (much less when
  that stay had PCI), an earlier sepsis over ~1 year (and brings the next admission sooner), an
  earlier hip fracture persistently, an earlier episodic tail event with its own time constant.
  Severity sets the admission type, ICU transfer, length of stay, in-hospital death and the time
  to the next admission.
- Labs come in panels (BMP, CBC, condition- and problem-specific panels) drawn on admission
  and then daily; values combine a per-patient offset, the conditions, and the acute severity
  following a trajectory (recovering or worsening toward death), so values are correlated
  within a panel, across days and across admissions.
- Medications follow conditions, the acute problem and abnormal lab values (insulin after
  high glucose, potassium after low potassium, ...); ICU stays get vitals every few hours.
- A long tail of personal lists, as in real MIMIC: each patient has a home-medication list and
  problem list, drawn from large pools (HOME_MED_POOL, PROBLEM_POOL) with Zipf-like frequencies and
  fixed links to the chronic conditions, and reconciled or coded at every admission in the
  patient's own order. Predicting them rewards memory of the patient's earlier admissions
  (in-context copying) and knowledge of the pools.
The ground truth (every condition's rank, prevalence, kind, code, signature and effects, the Zipf
law and the long-range rules) is written beside the tables as `ground_truth.json`; it holds no
patient rows.
Deterministic in the seed.
"""

from __future__ import annotations

import gzip
import os
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from ehrfm.io import atomic_dir, progress, summary, write_json
from tokenization import synth_world as world

HOUR = 3600
DAY = 24 * HOUR
YEAR = 365.25 * DAY
MAX_ADMISSIONS = 12

# --- latent chronic conditions: (name, ICD-10, title, base logit of prevalence, severity weight)
CONDITIONS = [
    ("chf", "I5022", "Chronic systolic (congestive) heart failure", -2.2, 0.55),
    ("copd", "J449", "Chronic obstructive pulmonary disease, unspecified", -2.3, 0.35),
    ("ckd", "N184", "Chronic kidney disease, stage 4 (severe)", -2.4, 0.50),
    ("diabetes", "E119", "Type 2 diabetes mellitus without complications", -1.4, 0.15),
    ("cirrhosis", "K7460", "Unspecified cirrhosis of liver", -3.0, 0.80),
    ("cancer", "C3490", "Malignant neoplasm of unspecified part of unspecified bronchus or lung", -2.8, 0.90),
    ("hypertension", "I10", "Essential (primary) hypertension", -0.6, 0.05),
    ("afib", "I4891", "Unspecified atrial fibrillation", -2.0, 0.25),
]
K = len(CONDITIONS)
CI = {c[0]: i for i, c in enumerate(CONDITIONS)}

# --- acute problems: (name, ICD-10, title, base logit, severity weight, {condition: logit boost})
ACUTE = [
    ("sepsis", "A419", "Sepsis, unspecified organism", -1.2, 1.3, {"cancer": 0.8, "diabetes": 0.4}),
    ("pneumonia", "J189", "Pneumonia, unspecified organism", -0.6, 0.6, {"copd": 1.2}),
    ("mi", "I214", "Non-ST elevation (NSTEMI) myocardial infarction", -1.2, 0.7, {"hypertension": 0.6, "diabetes": 0.5}),
    ("gi_bleed", "K922", "Gastrointestinal hemorrhage, unspecified", -1.1, 0.5, {"cirrhosis": 1.8}),
    ("aki", "N179", "Acute kidney failure, unspecified", -1.0, 0.6, {"ckd": 1.5}),
    ("chf_exac", "I5023", "Acute on chronic systolic (congestive) heart failure", -2.5, 0.6, {"chf": 3.0}),
    ("uti", "N390", "Urinary tract infection, site not specified", -0.7, 0.0, {}),
    ("hip_fracture", "S72001A", "Fracture of unspecified part of neck of right femur, initial encounter", -1.3, 0.2, {}),
    ("chest_pain", "R079", "Chest pain, unspecified", -0.4, -1.0, {"hypertension": 0.3}),
    ("copd_exac", "J441", "Chronic obstructive pulmonary disease with (acute) exacerbation", -2.8, 0.4, {"copd": 3.0}),
]
A = len(ACUTE)
AI = {a[0]: i for i, a in enumerate(ACUTE)}

# Filler diagnoses: persistent patient traits that carry little outcome signal.
FILLER_DX = [
    ("E785", "Hyperlipidemia, unspecified", 0.30),
    ("K219", "Gastro-esophageal reflux disease without esophagitis", 0.20),
    ("F329", "Major depressive disorder, single episode, unspecified", 0.15),
    ("Z87891", "Personal history of nicotine dependence", 0.25),
    ("E039", "Hypothyroidism, unspecified", 0.10),
    ("F419", "Anxiety disorder, unspecified", 0.12),
]

# --- lab items: itemid, label, fluid, category, unit, (mean, sd) on a linear or log scale
LABS = [
    (50983, "Sodium", "Blood", "Chemistry", "mEq/L", "lin", 139.0, 3.0),
    (50971, "Potassium", "Blood", "Chemistry", "mEq/L", "lin", 4.2, 0.4),
    (50902, "Chloride", "Blood", "Chemistry", "mEq/L", "lin", 102.0, 3.5),
    (50882, "Bicarbonate", "Blood", "Chemistry", "mEq/L", "lin", 25.0, 2.5),
    (51006, "Urea Nitrogen", "Blood", "Chemistry", "mg/dL", "log", np.log(15.0), 0.35),
    (50912, "Creatinine", "Blood", "Chemistry", "mg/dL", "log", np.log(0.9), 0.3),
    (50931, "Glucose", "Blood", "Chemistry", "mg/dL", "log", np.log(105.0), 0.2),
    (51301, "White Blood Cells", "Blood", "Hematology", "K/uL", "log", np.log(7.5), 0.3),
    (51222, "Hemoglobin", "Blood", "Hematology", "g/dL", "lin", 13.0, 1.4),
    (51265, "Platelet Count", "Blood", "Hematology", "K/uL", "log", np.log(240.0), 0.3),
    (50813, "Lactate", "Blood", "Blood Gas", "mmol/L", "log", np.log(1.3), 0.3),
    (51003, "Troponin T", "Blood", "Chemistry", "ng/mL", "log", np.log(0.02), 0.6),
    (50963, "NTproBNP", "Blood", "Chemistry", "pg/mL", "log", np.log(300.0), 0.8),
    (50861, "Alanine Aminotransferase (ALT)", "Blood", "Chemistry", "IU/L", "log", np.log(25.0), 0.4),
    (50878, "Asparate Aminotransferase (AST)", "Blood", "Chemistry", "IU/L", "log", np.log(28.0), 0.4),
    (50885, "Bilirubin, Total", "Blood", "Chemistry", "mg/dL", "log", np.log(0.6), 0.4),
    (51237, "INR(PT)", "Blood", "Hematology", "", "log", np.log(1.1), 0.12),
    (50862, "Albumin", "Blood", "Chemistry", "g/dL", "lin", 3.9, 0.4),
    (50852, "% Hemoglobin A1c", "Blood", "Chemistry", "%", "lin", 5.6, 0.5),
    (50821, "pO2", "Blood", "Blood Gas", "mm Hg", "lin", 90.0, 12.0),
    (50818, "pCO2", "Blood", "Blood Gas", "mm Hg", "lin", 40.0, 4.0),
    (50820, "pH", "Blood", "Blood Gas", "units", "lin", 7.40, 0.03),
]
LI = {lab[1]: i for i, lab in enumerate(LABS)}
L = len(LABS)
# Each lab's reportable range (an analyzer's limits, wide as real extremes): a value beyond it is reported at its limit,
# as a laboratory reports ">30" at the top of its range. Effects add up in z: without these a lactate of 2e8 mmol/L and
# a negative pO2 were written. The limits cut only the sickest tail (at most ~3% of a lab's values, beyond its deciles),
# so the tokens (per-code decile bins) are the same with or without them (compared on the default demo's cohort).
LAB_LIMITS = {
    "Sodium": (100.0, 180.0), "Potassium": (1.5, 10.0), "Chloride": (60.0, 150.0), "Bicarbonate": (5.0, 50.0),
    "Urea Nitrogen": (1.0, 300.0), "Creatinine": (0.1, 25.0), "Glucose": (10.0, 1500.0), "White Blood Cells": (0.1, 500.0),
    "Hemoglobin": (2.0, 25.0), "Platelet Count": (1.0, 2000.0), "Lactate": (0.2, 30.0), "Troponin T": (0.001, 25.0),
    "NTproBNP": (5.0, 70000.0), "Alanine Aminotransferase (ALT)": (1.0, 10000.0),
    "Asparate Aminotransferase (AST)": (1.0, 20000.0), "Bilirubin, Total": (0.1, 60.0), "INR(PT)": (0.5, 20.0),
    "Albumin": (0.5, 6.5), "% Hemoglobin A1c": (3.0, 20.0), "pO2": (10.0, 700.0), "pCO2": (5.0, 200.0), "pH": (6.5, 8.0),
}

# How conditions shift each lab (in sd units), persistent across admissions.
LAB_CONDITION_EFFECT = {
    "ckd": {"Creatinine": 3.5, "Urea Nitrogen": 2.5, "Potassium": 1.0, "Hemoglobin": -1.2, "Bicarbonate": -1.0},
    "diabetes": {"Glucose": 2.5, "% Hemoglobin A1c": 4.0},
    "cirrhosis": {"Bilirubin, Total": 3.0, "INR(PT)": 3.0, "Albumin": -2.5, "Platelet Count": -2.0,
                  "Asparate Aminotransferase (AST)": 2.0, "Alanine Aminotransferase (ALT)": 1.0, "Sodium": -1.0},
    "chf": {"NTproBNP": 3.0, "Sodium": -0.8, "Creatinine": 0.8},
    "copd": {"pCO2": 2.0, "Bicarbonate": 1.2, "pO2": -1.0},
    "cancer": {"Hemoglobin": -1.5, "Albumin": -1.5, "White Blood Cells": 0.6},
    "afib": {"NTproBNP": 0.8, "INR(PT)": 0.8},
    "hypertension": {"Creatinine": 0.2},
}
# How the acute problem's intensity shifts each lab (sd units per unit intensity).
LAB_ACUTE_EFFECT = {
    "sepsis": {"White Blood Cells": 2.0, "Lactate": 2.5, "Bicarbonate": -1.5, "Platelet Count": -1.5, "Creatinine": 1.0},
    "pneumonia": {"White Blood Cells": 1.8, "pO2": -1.5, "Lactate": 0.6},
    "mi": {"Troponin T": 4.0, "NTproBNP": 1.0},
    "gi_bleed": {"Hemoglobin": -3.0, "Urea Nitrogen": 1.5},
    "aki": {"Creatinine": 2.5, "Potassium": 1.5, "Urea Nitrogen": 2.0, "Bicarbonate": -1.2},
    "chf_exac": {"NTproBNP": 2.5, "Sodium": -1.0, "Creatinine": 0.8},
    "uti": {"White Blood Cells": 1.0},
    "hip_fracture": {"Hemoglobin": -1.0},
    "chest_pain": {"Troponin T": 0.3},
    "copd_exac": {"pCO2": 2.0, "pH": -1.5, "pO2": -1.5},
}
# Every severe illness: shock physiology.
LAB_SEVERITY_EFFECT = {"Lactate": 1.2, "Bicarbonate": -0.8, "pH": -0.8, "Creatinine": 0.5, "Albumin": -0.5}

# Panels: which labs are drawn together, and when (see _lab_panels).
PANELS = {
    "bmp": ["Sodium", "Potassium", "Chloride", "Bicarbonate", "Urea Nitrogen", "Creatinine", "Glucose"],
    "cbc": ["White Blood Cells", "Hemoglobin", "Platelet Count"],
    "lft": ["Alanine Aminotransferase (ALT)", "Asparate Aminotransferase (AST)", "Bilirubin, Total", "Albumin", "INR(PT)"],
    "gas": ["pH", "pCO2", "pO2", "Lactate"],
    "cardiac": ["Troponin T", "NTproBNP"],
    "a1c": ["% Hemoglobin A1c"],
}

# Medications: drug name, dose, unit, route.
MEDS = {
    "furosemide": ("Furosemide", "40", "mg", "IV"),
    "metoprolol": ("Metoprolol Tartrate", "25", "mg", "PO"),
    "albuterol": ("Albuterol 0.083% Neb Soln", "1", "NEB", "IH"),
    "sevelamer": ("Sevelamer Carbonate", "800", "mg", "PO"),
    "insulin": ("Insulin", "0", "UNIT", "SC"),
    "metformin": ("MetFORMIN (Glucophage)", "500", "mg", "PO"),
    "lactulose": ("Lactulose", "30", "mL", "PO"),
    "ondansetron": ("Ondansetron", "4", "mg", "IV"),
    "lisinopril": ("Lisinopril", "10", "mg", "PO"),
    "apixaban": ("Apixaban", "5", "mg", "PO"),
    "vancomycin": ("Vancomycin", "1000", "mg", "IV"),
    "piptazo": ("Piperacillin-Tazobactam", "4.5", "g", "IV"),
    "ceftriaxone": ("CefTRIAXone", "1", "g", "IV"),
    "azithromycin": ("Azithromycin", "500", "mg", "IV"),
    "aspirin": ("Aspirin", "81", "mg", "PO"),
    "heparin": ("Heparin", "5000", "UNIT", "SC"),
    "atorvastatin": ("Atorvastatin", "80", "mg", "PO"),
    "pantoprazole": ("Pantoprazole", "40", "mg", "IV"),
    "sodium_bicarb": ("Sodium Bicarbonate", "650", "mg", "PO"),
    "oxycodone": ("OxyCODONE (Immediate Release)", "5", "mg", "PO"),
    "prednisone": ("PredniSONE", "40", "mg", "PO"),
    "kayexalate": ("Sodium Polystyrene Sulfonate", "15", "gm", "PO"),
    "kcl": ("Potassium Chloride", "40", "mEq", "PO"),
    "vitamin_k": ("Phytonadione", "10", "mg", "IV"),
    "saline_bolus": ("Sodium Chloride 0.9%", "1000", "mL", "IV"),
    "norepinephrine": ("Norepinephrine", "8", "mg", "IV DRIP"),
    "acetaminophen": ("Acetaminophen", "650", "mg", "PO"),
}
MEDS_FOR_CONDITION = {
    "chf": ["furosemide", "metoprolol"], "copd": ["albuterol"], "ckd": ["sevelamer"],
    "diabetes": ["metformin"], "cirrhosis": ["lactulose"], "cancer": ["ondansetron"],
    "hypertension": ["lisinopril"], "afib": ["apixaban", "metoprolol"],
}
MEDS_FOR_ACUTE = {
    "sepsis": ["vancomycin", "piptazo", "saline_bolus"], "pneumonia": ["ceftriaxone", "azithromycin"],
    "mi": ["aspirin", "heparin", "atorvastatin"], "gi_bleed": ["pantoprazole"], "aki": ["sodium_bicarb"],
    "chf_exac": ["furosemide"], "uti": ["ceftriaxone"], "hip_fracture": ["oxycodone"],
    "chest_pain": ["aspirin"], "copd_exac": ["prednisone", "albuterol"],
}
# (lab, comparison, threshold, drug): abnormal results trigger orders an hour or two later.
MEDS_FOR_LAB = [
    ("Glucose", ">", 180.0, "insulin"), ("Potassium", ">", 5.3, "kayexalate"), ("Potassium", "<", 3.5, "kcl"),
    ("INR(PT)", ">", 2.5, "vitamin_k"), ("Lactate", ">", 3.0, "norepinephrine"),
]

# ICU vitals (icu/chartevents): itemid, label, abbreviation, category, unit, mean, sd, severity effect (sd/unit)
VITALS = [
    (220045, "Heart Rate", "HR", "Routine Vital Signs", "bpm", 85.0, 12.0, 1.5),
    (220179, "Non Invasive Blood Pressure systolic", "NBPs", "Routine Vital Signs", "mmHg", 122.0, 15.0, -1.5),
    (220210, "Respiratory Rate", "RR", "Respiratory", "insp/min", 18.0, 3.5, 1.2),
    (220277, "O2 saturation pulseoxymetry", "SpO2", "Respiratory", "%", 96.5, 1.8, -1.2),
    (223761, "Temperature Fahrenheit", "Temperature F", "Routine Vital Signs", "°F", 98.4, 0.8, 0.8),
]
SBP = 1  # its index in VITALS
# Systolic pressure falls toward a floor as shock deepens, not linearly without end: the severity effect above wrote a
# quarter of ICU pressures below 40 mmHg (some negative). Below SBP_KNEE the value bends toward SBP_FLOOR (continuous,
# slope 1 at the knee, increasing), so the sickest quarter reads 50-60 mmHg. Kept to 0.01 mmHg, the bend keeps the order
# of the values (strictly down to -20 mmHg before it), hence their decile tokens (per-code deciles): on the default demo
# cohort the tokens are byte-identical with and without it; only tokenizer.json's systolic edges move.
SBP_KNEE, SBP_FLOOR = 100.0, 40.0


def _pressure_floor(value: np.ndarray) -> np.ndarray:
    """Systolic pressures (mmHg, to 0.1) bent toward SBP_FLOOR below SBP_KNEE, to 0.01 mmHg; order-preserving.

    Applied to the values rounded to 0.1 mmHg, as they were written before the bend: ties stay ties.
    """
    value = np.round(value, 1)
    span = SBP_KNEE - SBP_FLOOR
    bent = np.round(SBP_FLOOR + span * np.exp(np.minimum(value - SBP_KNEE, 0.0) / span), 2)
    return np.where(value >= SBP_KNEE, value, bent)


CAREUNITS = [
    "Medical Intensive Care Unit (MICU)", "Surgical Intensive Care Unit (SICU)",
    "Cardiac Vascular Intensive Care Unit (CVICU)", "Coronary Care Unit (CCU)",
    "Medical/Surgical Intensive Care Unit (MICU/SICU)",
]
WARDS = ["Medicine", "Med/Surg", "Cardiology", "Surgery", "Neurology"]

PROCEDURES = [  # ICD-10-PCS code, title
    ("5A1955Z", "Respiratory Ventilation, Greater than 96 Consecutive Hours"),
    ("02HV33Z", "Insertion of Infusion Device into Superior Vena Cava, Percutaneous Approach"),
    ("0DJ08ZZ", "Inspection of Upper Intestinal Tract, Via Natural or Artificial Opening Endoscopic"),
    ("027034Z", "Dilation of Coronary Artery, One Artery with Drug-eluting Intraluminal Device, Percutaneous Approach"),
    ("0QS604Z", "Reposition Right Upper Femur with Internal Fixation Device, Open Approach"),
    ("5A1D70Z", "Performance of Urinary Filtration, Intermittent, Less than 6 Hours Per Day"),
]


# --- the long tail: home medications and problem-list diagnoses (see the module docstring).
HOME_MED_POOL = [
    "Amlodipine", "Atenolol", "Carvedilol", "Losartan Potassium", "Valsartan", "Hydrochlorothiazide",
    "Spironolactone", "Simvastatin", "Rosuvastatin", "Pravastatin", "Clopidogrel", "Warfarin", "Levothyroxine Sodium",
    "Omeprazole", "Famotidine", "Sertraline", "Citalopram", "Escitalopram", "Fluoxetine", "Trazodone", "BuPROPion",
    "Mirtazapine", "Gabapentin", "Pregabalin", "TraMADol", "HYDROmorphone (Dilaudid)", "Docusate Sodium", "Senna",
    "Polyethylene Glycol", "Bisacodyl", "Tamsulosin", "Finasteride", "Allopurinol", "Colchicine", "Alendronate Sodium",
    "Calcium Carbonate", "Vitamin D", "Cyanocobalamin", "Folic Acid", "Ferrous Sulfate", "Multivitamins",
    "Magnesium Oxide", "GlipiZIDE", "SITagliptin", "Insulin Glargine", "Empagliflozin", "Montelukast", "Tiotropium Bromide",
    "Fluticasone-Salmeterol Diskus", "Loratadine", "Cetirizine", "Donepezil", "Memantine", "QUEtiapine Fumarate",
    "Haloperidol", "Lorazepam", "ALPRAZolam", "ClonazePAM", "Zolpidem Tartrate", "Melatonin", "LevETIRAcetam",
    "Phenytoin", "Carbidopa-Levodopa", "Digoxin", "Amiodarone", "Diltiazem", "Isosorbide Mononitrate", "HydrALAZINE",
    "NIFEdipine", "Torsemide", "Bumetanide", "Rifaximin", "Nadolol", "Ursodiol", "Tacrolimus", "Mycophenolate Mofetil",
    "Methotrexate", "Hydroxychloroquine Sulfate", "Nicotine Patch", "Thiamine", "Oxybutynin", "Prochlorperazine",
]
PROBLEM_POOL = [  # ICD-10-CM code, title
    ("E1122", "Type 2 diabetes mellitus with diabetic chronic kidney disease"),
    ("E1140", "Type 2 diabetes mellitus with diabetic neuropathy, unspecified"),
    ("E6601", "Morbid (severe) obesity due to excess calories"), ("E669", "Obesity, unspecified"),
    ("E871", "Hypo-osmolality and hyponatremia"), ("E872", "Acidosis"), ("D649", "Anemia, unspecified"),
    ("D631", "Anemia in chronic kidney disease"), ("D696", "Thrombocytopenia, unspecified"),
    ("G4733", "Obstructive sleep apnea (adult) (pediatric)"), ("G309", "Alzheimer's disease, unspecified"),
    ("G20", "Parkinson's disease"), ("G40909", "Epilepsy, unspecified, not intractable, without status epilepticus"),
    ("F17210", "Nicotine dependence, cigarettes, uncomplicated"), ("F1020", "Alcohol dependence, uncomplicated"),
    ("F1120", "Opioid dependence, uncomplicated"), ("F331", "Major depressive disorder, recurrent, moderate"),
    ("F209", "Schizophrenia, unspecified"),
    ("I2510", "Atherosclerotic heart disease of native coronary artery without angina pectoris"),
    ("I252", "Old myocardial infarction"), ("I739", "Peripheral vascular disease, unspecified"),
    ("I480", "Paroxysmal atrial fibrillation"), ("I2720", "Pulmonary hypertension, unspecified"),
    ("I639", "Cerebral infarction, unspecified"),
    ("Z8673", "Personal history of transient ischemic attack (TIA), and cerebral infarction without residual deficits"),
    ("Z951", "Presence of aortocoronary bypass graft"), ("Z950", "Presence of cardiac pacemaker"),
    ("Z7901", "Long term (current) use of anticoagulants"), ("Z794", "Long term (current) use of insulin"),
    ("Z7982", "Long term (current) use of aspirin"), ("Z992", "Dependence on renal dialysis"),
    ("Z9981", "Dependence on supplemental oxygen"), ("Z66", "Do not resuscitate"),
    ("Z515", "Encounter for palliative care"), ("Z923", "Personal history of irradiation"),
    ("Z85118", "Personal history of other malignant neoplasm of bronchus and lung"),
    ("Z8546", "Personal history of malignant neoplasm of prostate"),
    ("Z853", "Personal history of malignant neoplasm of breast"),
    ("N400", "Benign prostatic hyperplasia without lower urinary tract symptoms"), ("M109", "Gout, unspecified"),
    ("M810", "Age-related osteoporosis without current pathological fracture"),
    ("M1990", "Unspecified osteoarthritis, unspecified site"), ("M069", "Rheumatoid arthritis, unspecified"),
    ("J45909", "Unspecified asthma, uncomplicated"), ("J9611", "Chronic respiratory failure with hypoxia"),
    ("K5900", "Constipation, unspecified"), ("K7030", "Alcoholic cirrhosis of liver without ascites"),
    ("K766", "Portal hypertension"), ("R188", "Other ascites"), ("B182", "Chronic viral hepatitis C"),
    ("B20", "Human immunodeficiency virus [HIV] disease"), ("E890", "Postprocedural hypothyroidism"),
    ("H9190", "Unspecified hearing loss, unspecified ear"), ("L89159", "Pressure ulcer of sacral region, unspecified stage"),
    ("R2681", "Unsteadiness on feet"), ("Z9181", "History of falling"),
    ("Z7952", "Long term (current) use of systemic steroids"), ("Z87440", "Personal history of urinary (tract) infections"),
    ("Z8701", "Personal history of pneumonia (recurrent)"),
]
# The pools' "world": Zipf-like popularity and one or two fixed condition links per item, drawn
# once from a fixed seed (not the data seed), so every synthetic cohort shares the same facts.
_WORLD = np.random.default_rng(20240601)


def _pool_logits(n_items: int) -> tuple[np.ndarray, np.ndarray]:
    popularity = -0.8 * np.log1p(_WORLD.permutation(n_items)).astype(float)
    links = np.zeros((K, n_items))
    for j in range(n_items):
        for c in _WORLD.choice(K, size=1 + int(_WORLD.random() < 0.4), replace=False):
            links[c, j] = 2.5
    return popularity, links


HOME_MED_POPULARITY, HOME_MED_LINKS = _pool_logits(len(HOME_MED_POOL))
PROBLEM_POPULARITY, PROBLEM_LINKS = _pool_logits(len(PROBLEM_POOL))

# The tail of latent conditions (ranks 9..N, Zipf prevalence; tokenization.synth_world).
TAIL = world.build_tail(
    LABS, len(ACUTE),
    reserved_codes={c[1] for c in CONDITIONS} | {a[1] for a in ACUTE} | {f[0] for f in FILLER_DX} | {p[0] for p in PROBLEM_POOL},
    existing_drugs={m[0] for m in MEDS.values()} | set(HOME_MED_POOL),
)
T = TAIL["rank"].size


@dataclass
class SynthConfig:
    """What decides a synthetic MIMIC-IV dataset: patients, seed, first subject id, base ICU vitals interval (hours)."""
    n_patients: int = 1000
    seed: int = 0
    first_subject_id: int = 10_000_000
    icu_vitals_every_hours: float = 4.0


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _gumbel_argmax(rng, logits):
    """One categorical draw per row of `logits` (Gumbel-max trick, vectorised)."""
    return np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)


def _ts(seconds: np.ndarray) -> pl.Series:
    seconds = np.asarray(seconds, dtype="int64")
    seconds = seconds - seconds % 60  # MIMIC times are to the minute
    return pl.Series((seconds * 1_000_000).astype("datetime64[us]"))


# Patients per generated chunk. Each chunk has its own random streams (seeded with (seed, chunk
# index)), so the output is a pure function of (seed, n_patients); this constant is part of that
# function, not a memory setting. 10k patients peak at a few hundred MiB.
CHUNK_PATIENTS = 10_000
# First id of each id column; chunks continue where the previous one stopped, so ids are unique.
ID_BASES = {"hadm_id": 20_000_000, "stay_id": 30_000_000, "transfer_id": 30_000_000, "labevent_id": 1,
            "specimen_id": 40_000_000, "pharmacy_id": 50_000_000, "poe_seq": 0}


def synthesize(out: str | os.PathLike, n_patients: int = 1000, seed: int = 0, overwrite: bool = False) -> dict:
    """Write a synthetic MIMIC-IV 2.2 directory (hosp/, icu/) to `out`; return a summary dict.

    Streams: patients are generated `CHUNK_PATIENTS` at a time, each chunk appended to every
    open `.csv.gz` file (one gzip stream per table), so peak memory is set by the chunk size,
    not by `n_patients`. The result is written under a temporary name and renamed when complete,
    with `synth_config.json` (the config and row counts) and `ground_truth.json` (the latent
    conditions, their Zipf law, signatures and effects, and the long-range rules:
    `tokenization.synth_world.ground_truth`; the same file for every seed and size).

    Args:
        out: output directory (must not exist unless `overwrite`).
        n_patients: number of subjects (>= 1).
        seed: fixes every value of every table, together with `n_patients` (>= 0).
        overwrite: replace an existing `out`.

    Returns:
        dict with out, patients, admissions, rows (total), tables (rows per table), seconds.

    Raises:
        UserError: n_patients < 1, seed < 0, or `out` exists without `overwrite`.
    """
    from ehrfm.errors import UserError

    if n_patients < 1:
        raise UserError(f"--patients must be at least 1 (got {n_patients})")
    if seed < 0:  # numpy's generators take no negative seed (a ValueError traceback, after --out was checked)
        raise UserError(f"--seed must be a whole number of at least 0 (got {seed})")
    cfg = SynthConfig(n_patients=int(n_patients), seed=int(seed))
    t0 = time.time()
    counts: dict[str, int] = {}
    with atomic_dir(out, overwrite=overwrite, command="synth") as tmp, ExitStack() as files:
        (tmp / "hosp").mkdir()
        (tmp / "icu").mkdir()
        handles: dict[str, gzip.GzipFile] = {}

        def append(name: str, df: pl.DataFrame) -> None:
            if name not in handles:
                # compresslevel 1: the data is synthetic, speed matters more than size.
                # mtime=0: the same seed gives byte-identical files.
                handles[name] = files.enter_context(
                    gzip.GzipFile(tmp / f"{name}.csv.gz", "wb", compresslevel=1, mtime=0))
            df.write_csv(handles[name], include_header=counts.get(name) is None,
                         datetime_format="%Y-%m-%d %H:%M:%S", date_format="%Y-%m-%d", null_value="")
            counts[name] = counts.get(name, 0) + df.height

        next_ids = dict(ID_BASES)
        n_chunks = -(-cfg.n_patients // CHUNK_PATIENTS)
        for c in progress(range(n_chunks), desc="synth: patients", unit="chunk", total=n_chunks):
            first = c * CHUNK_PATIENTS
            n = min(CHUNK_PATIENTS, cfg.n_patients - first)
            for name, df in _generate(cfg, c, first, n, next_ids).items():
                append(name, df)
        for name, df in _dictionaries().items():
            append(name, df)
        files.close()
        write_json(tmp / "synth_config.json", {**asdict(cfg), "chunk_patients": CHUNK_PATIENTS,
                                               "generator": "ehrfm.tokenization.synth", "rows": counts})
        write_json(tmp / "ground_truth.json", world.ground_truth(TAIL, CONDITIONS, ACUTE, LABS))
    seconds = time.time() - t0
    result = {
        "out": str(out),
        "patients": cfg.n_patients,
        "admissions": counts["hosp/admissions"],
        "rows": sum(counts.values()),
        "tables": counts,
        "seconds": round(seconds, 2),
    }
    summary(
        f"synth: {cfg.n_patients} patients, {result['admissions']} admissions, {result['rows']} rows "
        f"in {len(counts)} tables -> {out} in {seconds:.1f}s"
    )
    return result


# --------------------------------------------------------------------------------------------
def _generate(cfg: SynthConfig, chunk: int, first: int, n: int, next_ids: dict[str, int]) -> dict[str, pl.DataFrame]:
    """The event tables of patients [first, first + n) (chunk number `chunk`), entity by entity.

    Every draw comes from the chunk's `rng` (or its list stream) in a fixed order, so the order of
    the calls below is part of the output. Ids continue from `next_ids`, which is advanced.
    """
    rng = np.random.default_rng([cfg.seed, chunk, 0])
    pat = _patients_latent(rng, cfg, chunk, first, n)
    adm = _admission_course(rng, pat)
    n_adm = adm["pidx"].size
    hadm_id = next_ids["hadm_id"] + rng.permutation(n_adm).astype(np.int64)
    sid = pat["subject_id"][adm["pidx"]]
    dod = _dates_of_death(rng, pat, adm)

    tables: dict[str, pl.DataFrame] = {"hosp/patients": _patients_table(pat, dod)}
    tables["hosp/admissions"], ed, edreg = _admissions_table(rng, pat, adm, hadm_id, sid)
    icu = _icu_stays(rng, adm)
    icu["stay_id"] += next_ids["stay_id"] - ID_BASES["stay_id"]
    tables["icu/icustays"] = pl.DataFrame({
        "subject_id": sid[icu["i"]], "hadm_id": hadm_id[icu["i"]], "stay_id": icu["stay_id"],
        "first_careunit": icu["careunit"], "last_careunit": icu["careunit"],
        "intime": _ts(icu["in"]), "outtime": _ts(icu["out"]),
        "los": np.round((icu["out"] - icu["in"]) / DAY, 4),
    })
    tables["hosp/transfers"] = _transfers(rng, adm, icu, ed, edreg, hadm_id, sid)
    # labs drawn in panels on admission then daily; medications follow the labs they treat
    labs, lab_values = _labs(rng, adm, hadm_id, sid, pat["lab_offset"])
    tables["hosp/labevents"] = labs
    tables["hosp/prescriptions"] = _prescriptions(rng, adm, hadm_id, sid, lab_values, pat["home_meds"], pat["rng_lists"])
    # diagnoses (coded at discharge) and procedures
    tables["hosp/diagnoses_icd"] = _diagnoses(rng, adm, hadm_id, sid, pat["filler"], pat["problems"], pat["rng_lists"])
    tables["hosp/procedures_icd"] = _procedures(rng, adm, hadm_id, sid, icu["i"])
    tables["icu/chartevents"] = _vitals(rng, adm, icu["i"], icu["in"], icu["out"], icu["stay_id"], hadm_id, sid, cfg)
    _continue_ids(tables, next_ids, n_adm, icu["i"].size)
    return tables


def _continue_ids(tables: dict[str, pl.DataFrame], next_ids: dict[str, int], n_adm: int, n_icu: int) -> None:
    """Shift the row ids a chunk numbered from their base so they follow the previous chunk's."""
    shift = {k: next_ids[k] - ID_BASES[k] for k in ("transfer_id", "labevent_id", "specimen_id", "pharmacy_id", "poe_seq")}
    tables["hosp/transfers"] = tables["hosp/transfers"].with_columns(pl.col("transfer_id") + shift["transfer_id"])
    labs = tables["hosp/labevents"].with_columns(
        pl.col("labevent_id") + shift["labevent_id"], pl.col("specimen_id") + shift["specimen_id"])
    rx = tables["hosp/prescriptions"].with_columns(
        pl.col("pharmacy_id") + shift["pharmacy_id"], pl.col("poe_seq") + shift["poe_seq"],
        poe_id=pl.concat_str(pl.col("subject_id"), pl.lit("-"), pl.col("poe_seq") + shift["poe_seq"]))
    tables["hosp/labevents"], tables["hosp/prescriptions"] = labs, rx
    next_ids["hadm_id"] += n_adm
    next_ids["stay_id"] += n_icu
    next_ids["transfer_id"] += tables["hosp/transfers"].height
    next_ids["labevent_id"] += labs.height
    # Every draw includes the basic panel, so the specimens of a chunk are numbered without gaps.
    next_ids["specimen_id"] += labs["specimen_id"].n_unique()
    next_ids["pharmacy_id"] += rx.height
    next_ids["poe_seq"] += rx.height


def _patients_latent(rng, cfg: SynthConfig, chunk: int, first: int, n: int) -> dict:
    """Draw the n patients' baseline attributes (chunk `chunk`).

    Demographics, frailty, latent chronic conditions with onsets, personal lists, planned admissions
    of the n patients from `first` on (chunk number `chunk`).
    """
    subject_id = cfg.first_subject_id + first + np.arange(n, dtype=np.int64)
    female = rng.random(n) < 0.52
    anchor_age = np.clip(rng.normal(62, 17, n), 18, 91).astype(np.int64)
    anchor_year = rng.integers(2110, 2186, n)
    group_start = np.array([2008, 2011, 2014, 2017, 2020])[rng.integers(0, 5, n)]
    frailty = rng.normal(0, 1, n) + 0.02 * (anchor_age - 62)
    cond_logit = np.array([c[3] for c in CONDITIONS])[None, :] + 0.035 * (anchor_age[:, None] - 62) + 0.4 * frailty[:, None]
    z_multi = rng.normal(0, 1, (n, 1))  # shared multimorbidity factor
    cond_logit = cond_logit + 0.6 * z_multi
    has_cond = rng.random((n, K)) < _sigmoid(cond_logit)
    # Conditions present from the first admission or appearing later (slowly evolving disease).
    onset = np.where(has_cond, np.where(rng.random((n, K)) < 0.55, 0, rng.integers(1, 5, (n, K))), 99)
    # The tail: Zipf prevalence times a multimorbidity factor of mean 1 (keeps the marginal law).
    p_tail = TAIL["prevalence"][None, :] * np.exp(0.5 * z_multi - 0.125)
    tp, tc = np.nonzero(rng.random((n, T)) < p_tail)
    t_onset = np.where(rng.random(tp.size) < 0.5, 0, rng.integers(1, 5, tp.size))
    filler = rng.random((n, len(FILLER_DX))) < np.array([f[2] for f in FILLER_DX])[None, :]
    lab_offset = rng.normal(0, 0.4, (n, L))  # a patient's own baseline for each lab
    # Personal home-medication and problem lists, from their own random stream.
    rng_lists = np.random.default_rng([cfg.seed, chunk, 1])
    n_cond = has_cond.sum(1)
    home_meds = _personal_list(rng_lists, has_cond, HOME_MED_POPULARITY, HOME_MED_LINKS, 1.5 + 0.9 * n_cond, 10)
    problems = _personal_list(rng_lists, has_cond, PROBLEM_POPULARITY, PROBLEM_LINKS, 1.0 + 0.7 * n_cond, 8)
    n_cond_total = has_cond.sum(1)
    planned_adm = np.minimum(1 + rng.poisson(0.5 + 0.45 * n_cond_total + 0.4 * np.maximum(frailty, 0)), MAX_ADMISSIONS)

    return dict(subject_id=subject_id, female=female, anchor_age=anchor_age, anchor_year=anchor_year,
                group_start=group_start, frailty=frailty, has_cond=has_cond, onset=onset, filler=filler,
                lab_offset=lab_offset, rng_lists=rng_lists, home_meds=home_meds, problems=problems,
                n_cond_total=n_cond_total, planned_adm=planned_adm, tail_p=tp, tail_c=tc, tail_onset=t_onset)


# Recentred from -3.6 when the tail and the long-range rules were added (they add ~0.25 on average),
# so the case mix stays that of the first version: ~11% in-hospital deaths, ~23% of stays in ICU.
SEV_INTERCEPT = -3.85


def _head_weights() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Acute-problem parameters and the boost chronic conditions give them.

    Severity weight per head condition (K,), base logit (A,) and severity (A,) per acute problem,
    and the boost (K, A) each head condition gives each acute problem's logit.
    """
    sev_w_cond = np.array([c[4] for c in CONDITIONS])
    acute_base = np.array([a[3] for a in ACUTE])
    acute_sev = np.array([a[4] for a in ACUTE])
    acute_boost = np.zeros((K, A))
    for j, a in enumerate(ACUTE):
        for cname, b in a[5].items():
            acute_boost[CI[cname], j] = b
    return sev_w_cond, acute_base, acute_sev, acute_boost


def _tail_effects(pat: dict, chronic: np.ndarray, t_on: np.ndarray, pos: np.ndarray, admit: np.ndarray, a: int,
                  m: int) -> tuple:
    """Tail conditions at admission index `a`, and their effect on each stay.

    The tail conditions at admission index `a` of the m patients admitted (pos: patient -> row, -1
    if not admitted): onset times updated, (row, condition) of each active one, and per row the
    added severity (active and remote), log length of stay, ICU logit and log gap to the next stay.
    """
    tp, tc, t_on_idx = pat["tail_p"], pat["tail_c"], pat["tail_onset"]
    here = pos[tp] >= 0
    t_on = np.where(here & (t_on_idx == a), admit[np.maximum(pos[tp], 0)], t_on)
    active = here & np.where(chronic, t_on_idx <= a, t_on_idx == a)
    remote = here & ~chronic & (t_on_idx < a)
    ka, kr = np.nonzero(active)[0], np.nonzero(remote)[0]
    ra, ca = pos[tp[ka]], tc[ka]
    years_a = (admit[ra] - t_on[ka]) / YEAR
    sev_tail = np.where(chronic[ka], TAIL["sev"][ca] * (0.5 + 0.5 * np.minimum(1.0, years_a / 2.0)), TAIL["sev_event"][ca])
    years_r = (admit[pos[tp[kr]]] - t_on[kr]) / YEAR
    sev_remote = TAIL["sev_remote"][tc[kr]] * np.exp(-years_r / TAIL["tau_years"][tc[kr]])
    tail_sev = np.bincount(ra, sev_tail, m) + np.bincount(pos[tp[kr]], sev_remote, m)
    tail_los, tail_icu = np.bincount(ra, TAIL["los"][ca], m), np.bincount(ra, TAIL["icu"][ca], m)
    tail_gap = np.bincount(ra, TAIL["readmit"][ca], m)
    return t_on, ra, ca, tail_sev, tail_los, tail_icu, tail_gap


def _stack_admissions(adm_rows: list[dict], tail_rows: list[tuple]) -> dict:
    """The per-index admission arrays as one set sorted by (patient, index), with tail_a/tail_c."""
    adm = {k: np.concatenate([r[k] for r in adm_rows]) for k in adm_rows[0]}
    order = np.lexsort((adm["adm_index"], adm["pidx"]))
    adm = {k: v[order] for k, v in adm.items()}
    key = adm["pidx"] * MAX_ADMISSIONS + adm["adm_index"]  # ascending after the sort
    tp_a, ta_a, tc_a = (np.concatenate(x) for x in zip(*tail_rows, strict=True))
    adm["tail_a"] = np.searchsorted(key, tp_a * MAX_ADMISSIONS + ta_a)
    adm["tail_c"] = tc_a
    return adm


def _admission_course(rng, pat: dict) -> dict:
    """Draw admissions, one admission index at a time, vectorised over patients.

    Admissions, one admission index at a time, vectorised over patients: acute problem, severity,
    death, ICU, length of stay, then the gap to the next admission. Arrays sorted by (patient, index).

    Severity (the logit of in-hospital death) adds, besides frailty, age and the head conditions:
    the active tail conditions (chronic ones growing over two years from onset, episodic ones at
    their event stay) and the long-range rules of earlier stays (`synth_world.LONG_RANGE_RULES`:
    a remote MI or sepsis decaying with the years since, a remote hip fracture persisting, remote
    episodic tail events decaying with their own time constant). Also returns `tail_a`/`tail_c`:
    (admission row, tail condition) of every tail condition active at an admission.
    """
    anchor_age, anchor_year, onset, planned_adm = pat["anchor_age"], pat["anchor_year"], pat["onset"], pat["planned_adm"]
    frailty = pat["frailty"].copy()  # accumulates over admissions; the dates of death read the final value
    n = anchor_age.size
    sev_w_cond, acute_base, acute_sev, acute_boost = _head_weights()
    chronic = TAIL["chronic"][pat["tail_c"]]
    t_on = np.zeros(pat["tail_p"].size, np.int64)  # time of the onset admission, once it happened
    # Long-range state per patient: decayed sums (value at time ref) and a persistent flag.
    mi_v, mi_t = np.zeros(n), np.zeros(n, np.int64)
    sepsis_v, sepsis_t = np.zeros(n), np.zeros(n, np.int64)
    hip = np.zeros(n, bool)
    tau_mi, tau_sepsis = world.RULE_TAU_YEARS["prior_mi"] * YEAR, world.RULE_TAU_YEARS["prior_sepsis"] * YEAR

    year_start = (anchor_year - 1970).astype("datetime64[Y]")
    t = year_start.astype("datetime64[s]").astype(np.int64) + (rng.random(n) * 2.5 * 365 * DAY).astype(np.int64)
    alive = np.ones(n, bool)
    adm_rows, tail_rows = [], []
    pos = np.full(n, -1)
    for a in range(MAX_ADMISSIONS):
        idx = np.nonzero(alive & (a < planned_adm))[0]
        if idx.size == 0:
            break
        m = idx.size
        pos[:] = -1
        pos[idx] = np.arange(m)
        hour = rng.integers(0, 24, m)
        admit = t[idx] - (t[idx] % DAY) + hour * HOUR + rng.integers(0, 60, m) * 60
        cond_now = onset[idx] <= a
        age = anchor_age[idx] + (t[idx] - year_start[idx].astype("datetime64[s]").astype(np.int64)) / (365.25 * DAY)
        # Tail conditions: active now (chronic since onset, episodic at its event), and remote events.
        t_on, ra, ca, tail_sev, tail_los, tail_icu, tail_gap = _tail_effects(pat, chronic, t_on, pos, admit, a, m)
        logits = acute_base[None, :] + cond_now @ acute_boost
        np.add.at(logits, (ra, TAIL["acute"][ca]), TAIL["acute_boost"][ca])
        acute = _gumbel_argmax(rng, logits)
        # Long-range rules of earlier stays (decayed to this admission).
        mi_now = mi_v[idx] * np.exp(-(admit - mi_t[idx]) / tau_mi)
        sepsis_now = sepsis_v[idx] * np.exp(-(admit - sepsis_t[idx]) / tau_sepsis)
        sev = (
            SEV_INTERCEPT + 0.7 * frailty[idx] + 0.03 * (age - 65) + cond_now @ sev_w_cond + acute_sev[acute]
            + 0.15 * a + tail_sev + 0.9 * mi_now + 0.7 * sepsis_now + 0.6 * hip[idx] + rng.normal(0, 0.6, m)
        )
        p_death = _sigmoid(sev)
        died = rng.random(m) < p_death
        icu = rng.random(m) < _sigmoid(1.6 * sev + 2.3 + tail_icu)
        los_days = np.clip(np.exp(1.2 + 0.3 * (sev + 2.5) + 0.4 * icu + 0.25 * hip[idx] + tail_los
                                  + rng.normal(0, 0.45, m)), 0.3, 45.0)
        # Those who die tend to die early or after a long ICU course.
        los_days = np.where(died, np.clip(los_days * rng.uniform(0.4, 1.6, m), 0.5, 45), los_days)
        disch = admit + (los_days * DAY).astype(np.int64)
        emergency = rng.random(m) < _sigmoid(1.5 + 1.2 * sev)
        pci = (acute == AI["mi"]) & (rng.random(m) < 0.6)  # revascularisation (ICD-10-PCS 027034Z)
        adm_rows.append(dict(
            pidx=idx, adm_index=np.full(m, a), admit=admit, disch=disch, sev=sev, acute=acute, icu=icu,
            died=died, emergency=emergency, cond_now=cond_now, pci=pci,
        ))
        tail_rows.append((idx[ra], np.full(ra.size, a), ca))
        alive[idx] &= ~died
        # This stay's events join the long-range state.
        mi_v[idx] = mi_now + np.where(acute == AI["mi"], np.where(pci, 0.35, 1.0), 0.0)
        sepsis_v[idx] = sepsis_now + (acute == AI["sepsis"])
        mi_t[idx] = sepsis_t[idx] = admit
        hip[idx] |= acute == AI["hip_fracture"]
        # Time to next admission: sooner for the frail, the multimorbid, after severe stays and sepsis.
        scale_days = 420 * np.exp(-0.45 * frailty[idx] - 0.25 * cond_now.sum(1) - 0.35 * np.maximum(sev + 2, 0)
                                  + tail_gap - 0.5 * sepsis_v[idx])
        gap = (rng.exponential(scale_days) + 1.0) * DAY
        t[idx] = disch + gap.astype(np.int64)
        frailty[idx] += 0.15  # illness accumulates

    pat["frailty"] = frailty
    return _stack_admissions(adm_rows, tail_rows)


def _dates_of_death(rng, pat: dict, adm: dict) -> np.ndarray:
    """Each patient's death time in seconds since epoch (-1: alive).

    Seconds since epoch of each patient's death (-1: alive): in hospital at discharge, or after
    the last discharge (out of hospital, recorded only as dod in patients).
    """
    n, frailty, n_cond_total = pat["subject_id"].size, pat["frailty"], pat["n_cond_total"]
    last = np.zeros(n, np.int64)
    np.maximum.at(last, adm["pidx"], adm["disch"])
    died_in = np.zeros(n, bool)
    died_in[adm["pidx"][adm["died"]]] = True
    dod = np.full(n, -1, np.int64)
    dod[adm["pidx"][adm["died"]]] = adm["disch"][adm["died"]]
    post = (~died_in) & (rng.random(n) < _sigmoid(-2.6 + 0.6 * frailty + 0.2 * n_cond_total))
    dod[post] = last[post] + (rng.exponential(200, post.sum()) * DAY + DAY).astype(np.int64)

    return dod


def _patients_table(pat: dict, dod: np.ndarray) -> pl.DataFrame:
    dod_date = np.where(dod >= 0, dod, 0).astype("datetime64[s]").astype("datetime64[D]")
    return pl.DataFrame({
        "subject_id": pat["subject_id"],
        "gender": np.where(pat["female"], "F", "M"),
        "anchor_age": pat["anchor_age"],
        "anchor_year": pat["anchor_year"].astype(np.int64),
        "anchor_year_group": [f"{g} - {g + 2}" for g in pat["group_start"]],
    }).with_columns(dod=pl.Series(dod_date).cast(pl.Date)).with_columns(
        dod=pl.when(pl.Series(dod >= 0)).then(pl.col("dod")).otherwise(None)
    )


def _admissions_table(rng, pat: dict, adm: dict, hadm_id, sid) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """hosp/admissions, plus which stays came through the ED and their ED registration times."""
    n_adm, anchor_age = hadm_id.size, pat["anchor_age"]
    adm_type = np.where(
        adm["emergency"],
        np.array(["EW EMER.", "URGENT", "DIRECT EMER."])[rng.choice(3, n_adm, p=[0.8, 0.15, 0.05])],
        np.array(["ELECTIVE", "OBSERVATION ADMIT", "SURGICAL SAME DAY ADMISSION", "EU OBSERVATION"])[rng.integers(0, 4, n_adm)],
    )
    adm_loc = np.where(
        adm["emergency"],
        np.array(["EMERGENCY ROOM", "TRANSFER FROM HOSPITAL"])[(rng.random(n_adm) < 0.2).astype(int)],
        np.array(["PHYSICIAN REFERRAL", "CLINIC REFERRAL"])[(rng.random(n_adm) < 0.3).astype(int)],
    )
    frail_disch = _sigmoid(adm["sev"] + 1.0 + 0.04 * (anchor_age[adm["pidx"]] - 70))
    disch_loc = np.array(["HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY", "REHAB"])[
        np.clip((frail_disch * 3.5 + rng.normal(0, 0.6, n_adm)).astype(int), 0, 3)
    ]
    disch_loc = np.where(adm["died"], "DIED", disch_loc)
    ed = adm_loc == "EMERGENCY ROOM"
    edreg = adm["admit"] - (rng.uniform(2, 8, n_adm) * HOUR).astype(np.int64)
    death_time = np.where(adm["died"], adm["disch"], 0)
    table = pl.DataFrame({
        "subject_id": sid,
        "hadm_id": hadm_id,
        "admittime": _ts(adm["admit"]),
        "dischtime": _ts(adm["disch"]),
        "deathtime": _ts(death_time),
        "admission_type": adm_type,
        "admit_provider_id": np.array(["P1A2B3", "P4C5D6", "P7E8F9"])[rng.integers(0, 3, n_adm)],
        "admission_location": adm_loc,
        "discharge_location": disch_loc,
        "insurance": np.array(["Medicare", "Medicaid", "Other"])[rng.integers(0, 3, n_adm)],
        "language": "ENGLISH",
        "marital_status": np.array(["MARRIED", "SINGLE", "WIDOWED", "DIVORCED"])[rng.integers(0, 4, n_adm)],
        "race": np.array(["WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO - PUERTO RICAN", "ASIAN", "OTHER"])[
            rng.choice(5, n_adm, p=[0.65, 0.15, 0.08, 0.05, 0.07])],
        "edregtime": _ts(np.where(ed, edreg, 0)),
        "edouttime": _ts(np.where(ed, adm["admit"], 0)),
        "hospital_expire_flag": adm["died"].astype(np.int64),
    }).with_columns(
        deathtime=pl.when(pl.col("hospital_expire_flag") == 1).then(pl.col("deathtime")).otherwise(None),
        edregtime=pl.when(pl.Series(ed)).then(pl.col("edregtime")).otherwise(None),
        edouttime=pl.when(pl.Series(ed)).then(pl.col("edouttime")).otherwise(None),
    )
    return table, ed, edreg


def _icu_stays(rng, adm: dict) -> dict:
    """ICU stays from a few hours after admission for part of the stay (to discharge for deaths)."""
    icu_i = np.nonzero(adm["icu"])[0]
    icu_in = adm["admit"][icu_i] + (rng.uniform(1, 10, icu_i.size) * HOUR).astype(np.int64)
    icu_in = np.minimum(icu_in, adm["disch"][icu_i] - HOUR)
    frac = np.where(adm["died"][icu_i], 1.0, rng.uniform(0.3, 0.8, icu_i.size))
    icu_out = icu_in + ((adm["disch"][icu_i] - icu_in) * frac).astype(np.int64)
    icu_out = np.maximum(icu_out, icu_in + HOUR)
    icu_out = np.minimum(icu_out, adm["disch"][icu_i])
    unit_logits = np.zeros((icu_i.size, len(CAREUNITS)))
    unit_logits[:, 3] += 2.5 * (adm["acute"][icu_i] == AI["mi"])
    unit_logits[:, 1] += 2.5 * (adm["acute"][icu_i] == AI["hip_fracture"])
    unit_logits[:, 0] += 1.0
    careunit = np.array(CAREUNITS)[_gumbel_argmax(rng, unit_logits)]
    stay_id = 30_000_000 + rng.permutation(icu_i.size).astype(np.int64)
    return {"i": icu_i, "in": icu_in, "out": icu_out, "careunit": careunit, "stay_id": stay_id}


def _transfers(rng, adm: dict, icu: dict, ed, edreg, hadm_id, sid) -> pl.DataFrame:
    """hosp/transfers: ED -> ward (-> ICU -> ward) -> discharge."""
    n_adm = hadm_id.size
    icu_i, icu_in, icu_out, careunit = icu["i"], icu["in"], icu["out"], icu["careunit"]
    ward = np.array(WARDS)[rng.integers(0, len(WARDS), n_adm)]
    pre_icu_out = adm["disch"].copy()
    pre_icu_out[icu_i] = icu_in
    back = icu_out < adm["disch"][icu_i]  # survivors return to the ward before discharge
    ed_i, all_i, back_i = np.nonzero(ed)[0], np.arange(n_adm), icu_i[back]
    # (admission rows, eventtype, careunit per row, intime, outtime or None)
    moves = [
        (ed_i, "ED", np.full(ed_i.size, "Emergency Department"), edreg[ed_i], adm["admit"][ed_i]),
        (all_i, "admit", ward, adm["admit"], pre_icu_out),
        (icu_i, "transfer", careunit, icu_in, icu_out),
        (back_i, "transfer", ward[back_i], icu_out[back], adm["disch"][back_i]),
        (all_i, "discharge", np.full(n_adm, ""), adm["disch"], None),
    ]
    parts = []
    for rows, eventtype, unit, tin, tout in moves:
        k = rows.size
        parts.append(pl.DataFrame({
            "subject_id": sid[rows], "hadm_id": hadm_id[rows], "eventtype": pl.Series([eventtype] * k, dtype=pl.String),
            "careunit": pl.Series(unit, dtype=pl.String).replace("", None), "intime": _ts(tin),
            "outtime": _ts(tout) if tout is not None else pl.Series([None] * k, dtype=pl.Datetime("us")),
        }))
    transfers = pl.concat(parts).sort(["subject_id", "intime"])
    return transfers.with_columns(
        transfer_id=(30_000_000 + pl.int_range(pl.len())).cast(pl.Int64)
    ).select("subject_id", "hadm_id", "transfer_id", "eventtype", "careunit", "intime", "outtime")


def _dictionaries() -> dict[str, pl.DataFrame]:
    """The dictionary tables (d_labitems, d_icd_*, d_items) for every item the generator uses."""
    tables = {}
    tables["hosp/d_labitems"] = pl.DataFrame({
        "itemid": [lab[0] for lab in LABS], "label": [lab[1] for lab in LABS],
        "fluid": [lab[2] for lab in LABS], "category": [lab[3] for lab in LABS],
    })
    dx = [(c[1], c[2]) for c in CONDITIONS] + [(a[1], a[2]) for a in ACUTE] + [(f[0], f[1]) for f in FILLER_DX]
    dx += PROBLEM_POOL
    dx += list(zip(TAIL["code"].tolist(), TAIL["title"], strict=True))
    tables["hosp/d_icd_diagnoses"] = pl.DataFrame({
        "icd_code": [d[0] for d in dx], "icd_version": [10] * len(dx), "long_title": [d[1] for d in dx],
    })
    tables["hosp/d_icd_procedures"] = pl.DataFrame({
        "icd_code": [p[0] for p in PROCEDURES], "icd_version": [10] * len(PROCEDURES),
        "long_title": [p[1] for p in PROCEDURES],
    })
    tables["icu/d_items"] = pl.DataFrame({
        "itemid": [v[0] for v in VITALS], "label": [v[1] for v in VITALS], "abbreviation": [v[2] for v in VITALS],
        "linksto": ["chartevents"] * len(VITALS), "category": [v[3] for v in VITALS],
        "unitname": [v[4] for v in VITALS], "param_type": ["Numeric"] * len(VITALS),
        "lownormalvalue": pl.Series([None] * len(VITALS), dtype=pl.Float64),
        "highnormalvalue": pl.Series([None] * len(VITALS), dtype=pl.Float64),
    })
    return tables




def _personal_list(rng, has_cond, popularity, links, mean_len, max_len) -> np.ndarray:
    """Per patient, an ordered list of pool items (row of item indices, -1 padded).

    Items are drawn without replacement (Gumbel top-k) by popularity plus links to the patient's
    conditions; the list order is the patient's own and is kept at every admission.
    """
    logits = popularity[None, :] + has_cond.astype(float) @ links
    ranked = np.argsort(-(logits + rng.gumbel(size=logits.shape)), axis=1)[:, :max_len]
    length = np.minimum(rng.poisson(mean_len), max_len)
    return np.where(np.arange(max_len)[None, :] < length[:, None], ranked, -1)


def _list_events(rng, adm, items, p_present):
    """(admission index, item, position) for each list item present at each admission."""
    per_adm = items[adm["pidx"]]  # (n_adm, max_len)
    a, pos = np.nonzero((per_adm >= 0) & (rng.random(per_adm.shape) < p_present))
    return a, per_adm[a, pos], pos


def _intensity(sev, died, day):
    """Acute intensity on a given hospital day: recovering for survivors, worsening toward death."""
    base = np.exp(0.5 * sev)
    return base * np.where(died, 1.15, 0.72) ** day


def _labs(rng, adm, hadm_id, sid, lab_offset):
    """Draw the hosp/labevents table.

    hosp/labevents: draws (admission, then daily; the sickest every 6 h for two days), the panels
    each draw includes, and values from the patient's baseline, conditions, acute problem and course.
    """
    a_idx, draw_t, day, extra = _lab_draws(rng, adm)
    d, li = _lab_panels(rng, adm, a_idx, day, extra)
    value, lo, hi = _lab_values(rng, adm, lab_offset, a_idx, day, d, li)
    return _labevents_table(adm, hadm_id, sid, a_idx, draw_t, d, li, value, lo, hi)


def _lab_draws(rng, adm):
    """Blood draws: (admission row, time, stay day, extra 6-hourly check) per draw, in time order."""
    n_adm = adm["pidx"].size
    los_h = (adm["disch"] - adm["admit"]) / HOUR
    n_draws = np.minimum(1 + (los_h // 24).astype(np.int64), 14)
    a_idx = np.repeat(np.arange(n_adm), n_draws)
    day = np.arange(a_idx.size) - np.repeat(np.cumsum(n_draws) - n_draws, n_draws)
    offset_h = np.where(day == 0, rng.uniform(0.3, 2.0, a_idx.size), day * 24 + rng.normal(5, 1, a_idx.size))
    # The sickest are re-checked every 6 hours for the first two days (chemistry and blood gas).
    sick = np.nonzero(np.exp(0.5 * adm["sev"]) > 0.6)[0]
    extra_h = np.array([6.0, 12.0, 18.0, 30.0, 36.0, 42.0])
    ea = np.repeat(sick, extra_h.size)
    eh = np.tile(extra_h, sick.size) + rng.uniform(-0.5, 0.5, ea.size)
    keep = eh < los_h[ea]
    ea, eh = ea[keep], eh[keep]
    extra = np.r_[np.zeros(a_idx.size, bool), np.ones(ea.size, bool)]
    a_idx = np.r_[a_idx, ea]
    offset_h = np.r_[offset_h, eh]
    day = np.r_[day, (eh // 24).astype(np.int64)]
    order = np.lexsort((offset_h, a_idx))
    a_idx, offset_h, day, extra = a_idx[order], offset_h[order], day[order], extra[order]
    draw_t = adm["admit"][a_idx] + (offset_h * HOUR).astype(np.int64)
    draw_t = np.minimum(draw_t, adm["disch"][a_idx] - 60)
    return a_idx, draw_t, day, extra


def _lab_panels(rng, adm, a_idx, day, extra):
    """(draw index, lab index) of every lab drawn, panel order kept within a draw."""
    acute, cond, icu = adm["acute"][a_idx], adm["cond_now"][a_idx], adm["icu"][a_idx]
    intensity = _intensity(adm["sev"][a_idx], adm["died"][a_idx], day)
    # Which panels each draw includes: ordered as a clinician would (chemistry, blood count, ...).
    panel_masks = [
        ("bmp", np.ones(a_idx.size, bool)),
        ("cbc", ~extra),
        ("gas", icu | extra | np.isin(acute, [AI["sepsis"], AI["copd_exac"]]) | (intensity > 1.2)),
        ("lft", ~extra & cond[:, CI["cirrhosis"]] | (acute == AI["gi_bleed"]) | ((day == 0) & (rng.random(a_idx.size) < 0.2))),
        ("cardiac", ~extra & ((day <= 1) & np.isin(acute, [AI["mi"], AI["chest_pain"], AI["chf_exac"]]))
         | ((day == 0) & cond[:, CI["chf"]])),
        ("a1c", ~extra & (day == 0) & cond[:, CI["diabetes"]] & (rng.random(a_idx.size) < 0.5)),
    ]
    rows_d, rows_l = [], []
    for name, mask in panel_masks:
        d = np.nonzero(mask)[0]
        for lab in PANELS[name]:
            rows_d.append(d)
            rows_l.append(np.full(d.size, LI[lab]))
    d = np.concatenate(rows_d)
    li = np.concatenate(rows_l)
    # Keep the panel order within a draw (the stable sort by draw keeps insertion order).
    order = np.argsort(d, kind="stable")
    return d[order], li[order]


def _lab_values(rng, adm, lab_offset, a_idx, day, d, li):
    """Value, normal range low/high of each lab (rounded as a lab reports them)."""
    acute, cond = adm["acute"][a_idx], adm["cond_now"][a_idx]
    intensity = _intensity(adm["sev"][a_idx], adm["died"][a_idx], day)
    cond_eff = np.zeros((K, L))
    for cname, effects in LAB_CONDITION_EFFECT.items():
        for lab, e in effects.items():
            if lab in LI:
                cond_eff[CI[cname], LI[lab]] = e
    acute_eff = np.zeros((A, L))
    for aname, effects in LAB_ACUTE_EFFECT.items():
        for lab, e in effects.items():
            acute_eff[AI[aname], LI[lab]] = e
    sev_eff = np.zeros(L)
    for lab, e in LAB_SEVERITY_EFFECT.items():
        sev_eff[LI[lab]] = e

    # Active tail conditions shift their family's lab and often one of their own (per admission).
    ta, tc = adm["tail_a"], adm["tail_c"]
    fam = TAIL["family"][tc]
    tail_shift = np.zeros((adm["pidx"].size, L))
    np.add.at(tail_shift, (ta, TAIL["fam_lab"][fam]), TAIL["fam_lab_eff"][fam])
    own = TAIL["own_lab"][tc] >= 0
    np.add.at(tail_shift, (ta[own], TAIL["own_lab"][tc[own]]), TAIL["own_lab_eff"][tc[own]])

    pidx = adm["pidx"][a_idx[d]]
    z = (
        lab_offset[pidx, li]
        + (cond[d].astype(float) * cond_eff[:, li].T).sum(1)
        + tail_shift[a_idx[d], li]
        + intensity[d] * (acute_eff[acute[d], li] + sev_eff[li])
        + rng.normal(0, 0.35, d.size)
    )
    kind_log = np.array([lab[5] == "log" for lab in LABS])
    mean = np.array([lab[6] for lab in LABS])
    sd = np.array([lab[7] for lab in LABS])
    raw = mean[li] + sd[li] * z
    value = np.where(kind_log[li], np.exp(raw), raw)
    decimals = np.where(value >= 100, 0, np.where(value >= 10, 1, 2))
    value = np.round(value * 10.0 ** decimals) / 10.0 ** decimals
    if "pH" in LI:
        value = np.where(li == LI["pH"], np.round(raw, 2), value)
    limits = np.array([LAB_LIMITS[lab[1]] for lab in LABS])[li]
    value = np.clip(value, limits[:, 0], limits[:, 1])
    lo = np.where(kind_log, np.exp(mean - 2 * sd), mean - 2 * sd)[li]
    hi = np.where(kind_log, np.exp(mean + 2 * sd), mean + 2 * sd)[li]
    return value, lo, hi


def _labevents_table(adm, hadm_id, sid, a_idx, draw_t, d, li, value, lo, hi):
    unit = np.array([lab[4] for lab in LABS], dtype=str)[li]
    t = draw_t[d]  # all labs of a draw share the specimen time
    specimen = 40_000_000 + d.astype(np.int64)
    df = pl.DataFrame({
        "labevent_id": np.arange(d.size, dtype=np.int64) + 1,
        "subject_id": sid[a_idx[d]],
        "hadm_id": hadm_id[a_idx[d]],
        "specimen_id": specimen,
        "itemid": np.array([lab[0] for lab in LABS], dtype=np.int64)[li],
        "order_provider_id": pl.Series([None] * d.size, dtype=pl.String),
        "charttime": _ts(t),
        "storetime": _ts(t + HOUR),
        "value": pl.Series(value).cast(pl.String),
        "valuenum": value,
        "valueuom": pl.Series(unit, dtype=pl.String),
        "ref_range_lower": np.round(lo, 2),
        "ref_range_upper": np.round(hi, 2),
        "flag": pl.Series(np.where((value < lo) | (value > hi), "abnormal", "")).replace("", None),
        "priority": "ROUTINE",
        "comments": pl.Series([None] * d.size, dtype=pl.String),
    }).with_columns(valueuom=pl.when(pl.col("valueuom") == "").then(None).otherwise(pl.col("valueuom")))
    lab_values = dict(a=a_idx[d], li=li, value=value, t=t)
    return df, lab_values


def _prescriptions(rng, adm, hadm_id, sid, lab_values, home_meds, rng_lists):
    n_adm = adm["pidx"].size
    med_keys = list(MEDS) + [f"home:{d}" for d in HOME_MED_POOL] + [f"tail:{d[0]}" for d in TAIL["drugs"]]
    med_index = {k: i for i, k in enumerate(med_keys)}
    ai, mi, tt = [], [], []
    # Home medications of present conditions, reconciled a few hours after admission.
    for cname, drugs in MEDS_FOR_CONDITION.items():
        has = np.nonzero(adm["cond_now"][:, CI[cname]] & (rng.random(n_adm) < 0.8))[0]
        for drug in drugs:
            ai.append(has)
            mi.append(np.full(has.size, med_index[drug]))
            tt.append(adm["admit"][has] + (rng.uniform(3, 8, has.size) * HOUR).astype(np.int64))
    # Drugs of the active tail conditions (their own, and their family's), reconciled or started early.
    ta, tc = adm["tail_a"], adm["tail_c"]
    first_tail = len(MEDS) + len(HOME_MED_POOL)
    for drug, p in ((TAIL["own_drug"][tc], world.P_OWN_MED), (TAIL["fam_drug"][TAIL["family"][tc]], world.P_FAMILY_MED)):
        k = np.nonzero(rng.random(ta.size) < p)[0]
        ai.append(ta[k])
        mi.append(first_tail + drug[k])
        tt.append(adm["admit"][ta[k]] + (rng.uniform(3, 8, k.size) * HOUR).astype(np.int64))
    # Treatment of the acute problem, soon after the first labs.
    for aname, drugs in MEDS_FOR_ACUTE.items():
        has = np.nonzero((adm["acute"] == AI[aname]) & (rng.random(n_adm) < 0.9))[0]
        for drug in drugs:
            ai.append(has)
            mi.append(np.full(has.size, med_index[drug]))
            tt.append(adm["admit"][has] + (rng.uniform(2, 4, has.size) * HOUR).astype(np.int64))
    # Prophylaxis and symptom control for everyone with some probability.
    for drug, p in (("heparin", 0.5), ("acetaminophen", 0.6), ("ondansetron", 0.15)):
        has = np.nonzero(rng.random(n_adm) < p)[0]
        ai.append(has)
        mi.append(np.full(has.size, med_index[drug]))
        tt.append(adm["admit"][has] + (rng.uniform(4, 12, has.size) * HOUR).astype(np.int64))
    # Orders triggered by abnormal lab results.
    for lab, op, thr, drug in MEDS_FOR_LAB:
        sel = lab_values["li"] == LI[lab]
        sel &= (lab_values["value"] > thr) if op == ">" else (lab_values["value"] < thr)
        k = np.nonzero(sel)[0]
        ai.append(lab_values["a"][k])
        mi.append(np.full(k.size, med_index[drug]))
        tt.append(lab_values["t"][k] + (rng.uniform(1, 2.5, k.size) * HOUR).astype(np.int64))
    # The personal home-medication list, reconciled in the patient's own order (a minute apart).
    ha, item, pos = _list_events(rng_lists, adm, home_meds, 0.85)
    ai.append(ha)
    mi.append(len(MEDS) + item)
    tt.append(adm["admit"][ha] + 90 * 60 + pos * 60)
    a = np.concatenate(ai)
    m = np.concatenate(mi)
    start = np.minimum(np.concatenate(tt), adm["disch"][a] - 60)
    stop = np.maximum(adm["disch"][a], start + HOUR)
    order = np.lexsort((m, start, a))
    a, m, start, stop = a[order], m[order], start[order], stop[order]
    info = np.array([MEDS[k] for k in MEDS] + [(d, "1", "TAB", "PO") for d in HOME_MED_POOL] + list(TAIL["drugs"]), dtype=str)
    pharmacy_id = 50_000_000 + np.arange(a.size, dtype=np.int64)
    return pl.DataFrame({
        "subject_id": sid[a], "hadm_id": hadm_id[a], "pharmacy_id": pharmacy_id,
        "poe_id": pl.Series([f"{s}-{i}" for s, i in zip(sid[a].tolist(), range(a.size), strict=False)]),
        "poe_seq": np.arange(a.size, dtype=np.int64),
        "order_provider_id": pl.Series([None] * a.size, dtype=pl.String),
        "starttime": _ts(start), "stoptime": _ts(stop),
        "drug_type": "MAIN",
        "drug": pl.Series(info[m, 0], dtype=pl.String),
        "formulary_drug_cd": pl.Series([None] * a.size, dtype=pl.String),
        "gsn": pl.Series([None] * a.size, dtype=pl.String),
        "ndc": pl.Series([None] * a.size, dtype=pl.String),
        "prod_strength": pl.Series([None] * a.size, dtype=pl.String),
        "form_rx": pl.Series([None] * a.size, dtype=pl.String),
        "dose_val_rx": pl.Series(info[m, 1], dtype=pl.String),
        "dose_unit_rx": pl.Series(info[m, 2], dtype=pl.String),
        "form_val_disp": pl.Series(info[m, 1], dtype=pl.String),
        "form_unit_disp": pl.Series(info[m, 2], dtype=pl.String),
        "doses_per_24_hrs": pl.Series([None] * a.size, dtype=pl.Float64),
        "route": pl.Series(info[m, 3], dtype=pl.String),
    })


def _diagnoses(rng, adm, hadm_id, sid, filler, problems, rng_lists):
    n_adm = adm["pidx"].size
    ai, codes = [ np.arange(n_adm)], [np.array([ACUTE[a][1] for a in range(A)])[adm["acute"]]]
    for k, c in enumerate(CONDITIONS):
        has = np.nonzero(adm["cond_now"][:, k] & (rng.random(n_adm) < 0.7))[0]
        ai.append(has)
        codes.append(np.full(has.size, c[1]))
    # Tail conditions: chronic ones coded at each stay with some probability, episodic at their event.
    ta, tc = adm["tail_a"], adm["tail_c"]
    coded = np.where(TAIL["chronic"][tc], rng.random(ta.size) < world.P_CODE_CHRONIC, True)
    ai.append(ta[coded])
    codes.append(TAIL["code"][tc[coded]])
    for j, f in enumerate(FILLER_DX):
        has = np.nonzero(filler[adm["pidx"], j] & (rng.random(n_adm) < 0.6))[0]
        ai.append(has)
        codes.append(np.full(has.size, f[0]))
    # The personal problem list, coded after the rest in the patient's own order.
    pa, item, _ = _list_events(rng_lists, adm, problems, 0.8)
    ai.append(pa)
    codes.append(np.array([p[0] for p in PROBLEM_POOL])[item])
    a = np.concatenate(ai)
    code = np.concatenate(codes)
    order = np.argsort(a, kind="stable")
    a, code = a[order], code[order]
    seq = np.arange(a.size) - np.searchsorted(a, a) + 1
    return pl.DataFrame({
        "subject_id": sid[a], "hadm_id": hadm_id[a], "seq_num": seq.astype(np.int64),
        "icd_code": code, "icd_version": np.full(a.size, 10, dtype=np.int64),
    })


def _procedures(rng, adm, hadm_id, sid, icu_i):
    n_adm = adm["pidx"].size
    ai, codes, days = [], [], []

    def add(mask, code, day_lo, day_hi):
        k = np.nonzero(mask)[0]
        ai.append(k)
        codes.append(np.full(k.size, code))
        days.append(rng.uniform(day_lo, day_hi, k.size))

    is_icu = np.zeros(n_adm, bool)
    is_icu[icu_i] = True
    add(is_icu & (rng.random(n_adm) < _sigmoid(adm["sev"] + 1.0)), "5A1955Z", 0, 1)
    add(is_icu & (rng.random(n_adm) < 0.5), "02HV33Z", 0, 1)
    add((adm["acute"] == AI["gi_bleed"]) & (rng.random(n_adm) < 0.7), "0DJ08ZZ", 0, 2)
    add(adm["pci"], "027034Z", 0, 1)  # decided with the stay's course: it changes later risk
    add((adm["acute"] == AI["hip_fracture"]) & (rng.random(n_adm) < 0.85), "0QS604Z", 0, 2)
    add((adm["acute"] == AI["aki"]) & (rng.random(n_adm) < 0.25), "5A1D70Z", 1, 3)
    a = np.concatenate(ai)
    code = np.concatenate(codes)
    when = np.minimum(adm["admit"][a] + (np.concatenate(days) * DAY).astype(np.int64), adm["disch"][a])
    order = np.lexsort((when, a))
    a, code, when = a[order], code[order], when[order]
    seq = np.arange(a.size) - np.searchsorted(a, a) + 1
    return pl.DataFrame({
        "subject_id": sid[a], "hadm_id": hadm_id[a], "seq_num": seq.astype(np.int64),
        "chartdate": pl.Series(when.astype("datetime64[s]").astype("datetime64[D]")).cast(pl.Date),
        "icd_code": code, "icd_version": np.full(a.size, 10, dtype=np.int64),
    })


def _vitals(rng, adm, icu_i, icu_in, icu_out, stay_id, hadm_id, sid, cfg):
    # Sicker patients are charted more often (hourly at worst).
    step = (cfg.icu_vitals_every_hours * HOUR / np.clip(1 + np.exp(0.5 * adm["sev"][icu_i]), 1, 4)).astype(np.int64)
    n_obs = np.maximum(1, (icu_out - icu_in) // step).astype(np.int64)
    s = np.repeat(np.arange(icu_i.size), n_obs)
    k = np.arange(s.size) - np.repeat(np.cumsum(n_obs) - n_obs, n_obs)
    t = icu_in[s] + k * step[s] + rng.integers(0, 30, s.size) * 60
    a = icu_i[s]
    intensity = _intensity(adm["sev"][a], adm["died"][a], (t - adm["admit"][a]) / DAY)
    V = len(VITALS)
    vi = np.tile(np.arange(V), s.size)
    rep = np.repeat(np.arange(s.size), V)
    mean = np.array([v[5] for v in VITALS])[vi]
    sd = np.array([v[6] for v in VITALS])[vi]
    eff = np.array([v[7] for v in VITALS])[vi]
    value = mean + sd * (eff * np.minimum(intensity[rep], 4.0) + rng.normal(0, 0.6, vi.size))
    value = np.where(vi == 3, np.minimum(value, 100.0), value)
    sbp = vi == SBP
    value = np.where(sbp, _pressure_floor(value), np.round(value, 1))
    return pl.DataFrame({
        "subject_id": sid[a][rep], "hadm_id": hadm_id[a][rep], "stay_id": stay_id[s][rep],
        "caregiver_id": pl.Series([None] * rep.size, dtype=pl.Int64),
        "charttime": _ts(t[rep]), "storetime": _ts(t[rep] + 600),
        "itemid": np.array([v[0] for v in VITALS], dtype=np.int64)[vi],
        "value": pl.Series(value).cast(pl.String), "valuenum": value,
        "valueuom": pl.Series(np.array([v[4] for v in VITALS], dtype=str)[vi], dtype=pl.String),
        "warning": np.zeros(rep.size, dtype=np.int64),
    })
