"""Benchmark: our ETL (`ehrfm etl`) side by side with reference MIMIC-IV -> MEDS ETLs, same files.

    python benchmarks/etl_reference.py [--inputs demo,synth:2000,synth:10000] [--repeats 3]
        [--ref-venv /tmp/refetl-venv] [--mt-venv /tmp/refetl-mt-venv] [--threads N] [--json OUT.json]

What is compared (each tool as its own subprocess, interleaved, fresh output dir every run):
- ours:           `ehrfm etl RAW --out OUT` (this repository's venv, or `ehrfm` on PATH; --ours).
- meds_etl:       Stanford's `meds_etl_mimic SRC OUT --num_shards 100 --num_proc 1 --backend polars`
                  (meds_etl 0.3.11 from PyPI; 100 shards and 1 process are its defaults; writes MEDS 0.3.3).
- MIMIC_IV_MEDS:  `meds-extract-run spec=MIMIC-IV output_dir=OUT do_download=false dataset_key=demo
                  input_dir=SRC` (MIMIC-IV-MEDS 0.2.0 on MEDS-Extract 0.7 / MEDS-transforms 0.7; serial
                  stage runner, its default; 1000 subjects per shard from its spec; writes MEDS 0.4).
Inputs: the public MIMIC-IV demo 2.2 (`../shared/data/mimic-iv-demo-2.2`, --demo) and synthetic cohorts
from `ehrfm synth --patients N --seed 0` (made once per run, not timed).
Per input and tool it prints the median wall time and peak RSS over --repeats runs, the ratio
reference / ours, and the rows (events) and subjects in the output parquet (data/ only), then a
per-source-table table of output rows, so one sees that the tools did comparable work and which
raw tables one converts and the other does not.

Fairness, as run: every tool gets the same env (POLARS_MAX_THREADS = OMP_NUM_THREADS = RAYON_NUM_THREADS
= --threads, default all cores) and, when --threads is below the core count, the same CPUs via taskset;
process-level parallelism is left at each tool's default of one worker (meds_etl --num_proc 1, the
MEDS-transforms runner serial) unless --ref-num-proc is given. Each repeat runs the tools in a rotated
order (ours, A, B / A, B, ours / ...), so background load hits all of them alike; the input files are
read once before timing so that all runs see a warm page cache. Peak RSS: the process tree (the tool,
its stage subprocesses and pool workers: everything in its session) is sampled every 0.1 s from /proc
and RSS summed (shared pages count once per process); `max1` is the exact ru_maxrss of the largest
single process of the tree (wait4). The tree peak reported is max(sampled sum, max1).

Inputs the references cannot read as is (reported, not hidden; --no-stub shows the failures):
- Both references open a fixed list of raw tables and fail on the first one that is missing:
  meds_etl_mimic gunzips e.g. icu/chartevents.csv.gz and polars fails with NoDataError on the empty
  result; MEDS-Extract raises FileNotFoundError "No source files found for prefix 'icu/chartevents'".
  The shared demo has no icu/chartevents; `ehrfm synth` writes 13 of the tables, not datetimeevents,
  inputevents, ingredientevents, outputevents, procedureevents, drgcodes, emar, pharmacy, hcpcsevents,
  microbiologyevents, omr, services, d_hcpcs. So for each reference the script builds a view of the
  input: symlinks to every raw file, plus a 0-row file with the MIMIC-IV 2.2 columns for each table
  that reference needs and the input lacks (listed in the output). This adds no data. For meds_etl it
  is a header-only .csv.gz (it reads every column as a string). For MIMIC_IV_MEDS it is a typed 0-row
  .parquet (it accepts parquet sources): a header-only CSV is inferred as all-string there and its joins
  then fail, e.g. a missing hosp/drgcodes gives polars SchemaError "datatypes of join keys don't match -
  `hadm_id`: str on left does not match `hadm_id`: i64 on right".
  Ours reads the original directory (it reports absent tables itself).
- meds_etl_mimic wants SRC/2.2/{hosp,icu}: the view has that layout.
- MIMIC_IV_MEDS reads mimic-code concept-map CSVs (normally downloaded from GitHub mimic-code v2.4.0)
  from its input dir; offline, the view links the copies that the meds_etl wheel ships
  (meds_etl/mimic/concept_map; 6 of its 10 files differ from the checksums MIMIC_IV_MEDS pins). They only
  feed code metadata (descriptions, parent codes), never events. --concept-maps DIR uses other copies.
- MIMIC_IV_MEDS calls `MEDS_transform-stage` by name, so its venv's bin/ is put first on PATH.

The work differs by design (see the per-table rows): meds_etl writes up to 7 events per admission (type,
location, discharge location, insurance, language, marital status, race), but not icustays; MIMIC_IV_MEDS
writes two events per lab (specimen collected + result), start and end per infusion/procedure, patient
weight, demographics per admission, and its medications come from emar and pharmacy (prescriptions is
only joined for NDC codes). Ours converts every event table of tokenization/etl.py's TABLES that the
input holds (hosp: patients, admissions, transfers, diagnoses_icd, procedures_icd, drgcodes, labevents,
prescriptions, emar + emar_detail, pharmacy, poe, microbiologyevents, hcpcsevents, services, omr; icu:
icustays, chartevents, inputevents, outputevents, procedureevents, datetimeevents, ingredientevents; and
the MIMIC-IV-ED tables when ed/ is there). Its per-table rows are its own account (etl_config.json
"tables": events written per raw table after every drop), not a guess from code prefixes; the
references' rows come from their output's table / source_block column.

Install the references (each in its own venv, never in this repository's .venv: meds_etl pins meds==0.3.3,
MEDS-Extract needs meds~=0.4; neither needs torch; meds_etl 0.3.11 calls polars.read_csv_batched, removed
in polars 2, hence the pin):
    python3 -m venv /tmp/refetl-venv
    /tmp/refetl-venv/bin/pip install meds_etl==0.3.11 "polars<2"
    python3 -m venv /tmp/refetl-mt-venv
    /tmp/refetl-mt-venv/bin/pip install mimic-iv-meds==0.2.0
A reference that is not installed (no bin/meds_etl_mimic or bin/meds-extract-run in its venv and none
on PATH) is skipped with a message. Patient data is never printed: counts only; the tools' own output
goes to log files in the work dir, and a failure is summarised by the missing table or exception class.
Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DEMO = REPO.parent / "shared" / "data" / "mimic-iv-demo-2.2"
PAGE = os.sysconf("SC_PAGE_SIZE")

# MIMIC-IV 2.2 column names of the tables that a reference opens (header-only stubs when absent).
MIMIC_COLUMNS = {
    "hosp/admissions": "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,"
                       "admission_location,discharge_location,insurance,language,marital_status,race,edregtime,"
                       "edouttime,hospital_expire_flag",
    "hosp/patients": "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod",
    "hosp/transfers": "subject_id,hadm_id,transfer_id,eventtype,careunit,intime,outtime",
    "hosp/diagnoses_icd": "subject_id,hadm_id,seq_num,icd_code,icd_version",
    "hosp/procedures_icd": "subject_id,hadm_id,seq_num,chartdate,icd_code,icd_version",
    "hosp/drgcodes": "subject_id,hadm_id,drg_type,drg_code,description,drg_severity,drg_mortality",
    "hosp/labevents": "labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,charttime,storetime,"
                      "value,valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,comments",
    "hosp/prescriptions": "subject_id,hadm_id,pharmacy_id,poe_id,poe_seq,order_provider_id,starttime,stoptime,"
                          "drug_type,drug,formulary_drug_cd,gsn,ndc,prod_strength,form_rx,dose_val_rx,dose_unit_rx,"
                          "form_val_disp,form_unit_disp,doses_per_24_hrs,route",
    "hosp/omr": "subject_id,chartdate,seq_num,result_name,result_value",
    "hosp/hcpcsevents": "subject_id,hadm_id,chartdate,hcpcs_cd,seq_num,short_description",
    "hosp/microbiologyevents": "microevent_id,subject_id,hadm_id,micro_specimen_id,order_provider_id,chartdate,"
                               "charttime,spec_itemid,spec_type_desc,test_seq,storedate,storetime,test_itemid,"
                               "test_name,org_itemid,org_name,isolate_num,quantity,ab_itemid,ab_name,dilution_text,"
                               "dilution_comparison,dilution_value,interpretation,comments",
    "hosp/services": "subject_id,hadm_id,transfertime,prev_service,curr_service",
    "hosp/emar": "subject_id,hadm_id,emar_id,emar_seq,poe_id,pharmacy_id,enter_provider_id,charttime,medication,"
                 "event_txt,scheduletime,storetime",
    "hosp/pharmacy": "subject_id,hadm_id,pharmacy_id,poe_id,starttime,stoptime,medication,proc_type,status,"
                     "entertime,verifiedtime,route,frequency,disp_sched,infusion_type,sliding_scale,"
                     "lockout_interval,basal_rate,one_hr_max,doses_per_24_hrs,duration,duration_interval,"
                     "expiration_value,expiration_unit,expirationdate,dispensation,fill_quantity",
    "hosp/d_icd_diagnoses": "icd_code,icd_version,long_title",
    "hosp/d_icd_procedures": "icd_code,icd_version,long_title",
    "hosp/d_hcpcs": "code,category,long_description,short_description",
    "hosp/d_labitems": "itemid,label,fluid,category",
    "icu/icustays": "subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los",
    "icu/chartevents": "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valuenum,"
                       "valueuom,warning",
    "icu/datetimeevents": "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valueuom,"
                          "warning",
    "icu/inputevents": "subject_id,hadm_id,stay_id,caregiver_id,starttime,endtime,storetime,itemid,amount,"
                       "amountuom,rate,rateuom,orderid,linkorderid,ordercategoryname,secondaryordercategoryname,"
                       "ordercomponenttypedescription,ordercategorydescription,patientweight,totalamount,"
                       "totalamountuom,isopenbag,continueinnextdept,statusdescription,originalamount,originalrate",
    "icu/ingredientevents": "subject_id,hadm_id,stay_id,caregiver_id,starttime,endtime,storetime,itemid,amount,"
                            "amountuom,rate,rateuom,orderid,linkorderid,statusdescription,originalamount,"
                            "originalrate",
    "icu/outputevents": "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valueuom",
    "icu/procedureevents": "subject_id,hadm_id,stay_id,caregiver_id,starttime,endtime,storetime,itemid,value,"
                           "valueuom,location,locationcategory,orderid,linkorderid,ordercategoryname,"
                           "ordercategorydescription,patientweight,isopenbag,continueinnextdept,statusdescription,"
                           "ORIGINALAMOUNT,ORIGINALRATE",
    "icu/d_items": "itemid,label,abbreviation,linksto,category,unitname,param_type,lownormalvalue,highnormalvalue",
}
# Tables each reference opens unconditionally (from their --help/specs; it fails when one is absent).
NEEDS = {
    "meds_etl": ["icu/datetimeevents", "icu/inputevents", "icu/chartevents", "icu/procedureevents",
                 "icu/ingredientevents", "icu/outputevents", "hosp/admissions", "hosp/diagnoses_icd",
                 "hosp/drgcodes", "hosp/hcpcsevents", "hosp/labevents", "hosp/microbiologyevents", "hosp/omr",
                 "hosp/patients", "hosp/prescriptions", "hosp/procedures_icd", "hosp/services", "hosp/transfers"],
    "MIMIC_IV_MEDS": ["hosp/admissions", "hosp/diagnoses_icd", "hosp/drgcodes", "hosp/emar", "hosp/hcpcsevents",
                      "hosp/labevents", "hosp/omr", "hosp/patients", "hosp/pharmacy", "hosp/prescriptions",
                      "hosp/procedures_icd", "hosp/transfers", "icu/icustays", "icu/chartevents",
                      "icu/procedureevents", "icu/inputevents", "icu/outputevents", "hosp/d_icd_diagnoses",
                      "hosp/d_icd_procedures", "hosp/d_hcpcs", "hosp/d_labitems", "icu/d_items"],
}
CONCEPT_MAPS = ["d_labitems_to_loinc", "inputevents_to_rxnorm", "lab_itemid_to_loinc", "meas_chartevents_main",
                "meas_chartevents_value", "numerics-summary", "outputevents_to_loinc", "proc_datetimeevents",
                "proc_itemid", "waveforms-summary"]

# ------------------------------------------------------------------------------ measuring
def _tree_rss(session: int) -> int:
    """Summed RSS in bytes of every process whose session id is `session` (the tool's whole tree)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # fields[0] is state (3rd stat field): session is the 6th, rss the 24th
            total += int(fields[21]) * PAGE
    return total


@dataclass
class Run:
    ok: bool
    wall_s: float
    tree_mib: float  # max(sampled tree sum, max1)
    max1_mib: float  # ru_maxrss of the largest single process
    log: Path
    error: str = ""


def measure(cmd: list[str], env: dict, log: Path, cwd: Path) -> Run:
    """Run `cmd` in its own session; wall time, sampled tree RSS peak and ru_maxrss (wait4)."""
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True)
        peak, done = [0], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(proc.pid))
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    max1 = usage.ru_maxrss / 1024
    run = Run(proc.returncode == 0, wall, max(peak[0] / 2**20, max1), max1, log)
    if not run.ok:
        run.error = f"exit {proc.returncode}: {failure_summary(log)}"
    return run


def failure_summary(log: Path) -> str:
    """Why a tool failed, without patient values: the missing table and the exception class only."""
    text = log.read_text(errors="replace")
    exc = ""
    for line in reversed(text.strip().splitlines()):
        m = re.match(r"^([A-Za-z_][\w.]*(?:Error|Exception))\b", line.strip())
        if m:
            exc = m.group(1)
            break
    for pat in (r"gzip: \S*?/((?:hosp|icu)/\w+)\.csv\.gz: No such file", r"No source files found for prefix '([^']+)'",
                r"No such file or directory: '[^']*?((?:hosp|icu)/\w+)[^']*'"):
        m = re.search(pat, text)
        if m:
            return f"raw table {m.group(1)} missing -> {exc or 'error'}"
    return f"{exc or 'error'} (details in {log})"


# ------------------------------------------------------------------------------ tools
@dataclass
class Tool:
    name: str
    argv: callable  # (src_dir, view_dir, out_dir) -> list[str]
    env: dict = field(default_factory=dict)
    data_glob: str = "data/**/*.parquet"
    table_of: callable = None  # (polars LazyFrame, out_dir) -> LazyFrame with a `table` column
    tables_of: callable = None  # (out_dir) -> {table: output rows}: the tool's own account, when it keeps one
    stub_format: str = "csv"  # of the 0-row files for tables it needs that the input lacks


def find_bin(venv: str | None, name: str) -> Path | None:
    if venv and (Path(venv) / "bin" / name).exists():
        return Path(venv) / "bin" / name
    found = shutil.which(name)
    return Path(found) if found else None


def ours_command(args) -> list[str]:
    ours = args.ours or (str(REPO / ".venv" / "bin" / "ehrfm") if (REPO / ".venv" / "bin" / "ehrfm").exists()
                         else shutil.which("ehrfm"))
    return [ours] if ours else [sys.executable, "-m", "ehrfm"]


def make_tools(args) -> tuple[list[Tool], list[str]]:
    notes = []
    ours_cmd = ours_command(args)

    def ours_tables(out):
        # Our ETL's own per-table account (etl_config.json "tables": events written per raw table,
        # after every drop), exact for every table it converts (tokenization/etl.py TABLES).
        account = json.loads((out / "metadata" / "etl_config.json").read_text())["tables"]
        return {table: a["events_written"] for table, a in account.items()}

    tools = [Tool("ours", lambda src, view, out: [*ours_cmd, "etl", str(src), "--out", str(out)],
                  env={"EHRFM_QUIET": "1"}, data_glob="data/*/*.parquet", tables_of=ours_tables)]

    want = set(args.tools.split(","))
    if "meds_etl" in want:
        exe = find_bin(args.ref_venv, "meds_etl_mimic")
        if exe is None:
            notes.append(f"meds_etl: SKIPPED, meds_etl_mimic not found in {args.ref_venv}/bin nor on PATH "
                         "(install: see this script's docstring)")
        else:
            nproc = str(args.ref_num_proc)
            tools.append(Tool(
                "meds_etl",
                lambda src, view, out, exe=exe, nproc=nproc: [str(exe), str(view), str(out), "--num_shards",
                                                              str(args.ref_num_shards), "--num_proc", nproc,
                                                              "--backend", "polars"],
                data_glob="data/*.parquet", table_of=lambda lf, out: lf.select("table")))
    if "MIMIC_IV_MEDS" in want:
        exe = find_bin(args.mt_venv, "meds-extract-run")
        if exe is None:
            notes.append(f"MIMIC_IV_MEDS: SKIPPED, meds-extract-run not found in {args.mt_venv}/bin nor on PATH "
                         "(install: see this script's docstring)")
        elif concept_map_dir(args) is None:
            notes.append("MIMIC_IV_MEDS: SKIPPED, no mimic-code concept maps found (they ship with meds_etl: "
                         "install it, or give --concept-maps DIR)")
        else:
            env = {"PATH": f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
            runner = ""
            if args.ref_num_proc > 1:
                notes.append("MIMIC_IV_MEDS: --ref-num-proc > 1 needs hydra-joblib-launcher in its venv")
                runner = str(Path(args.workdir_resolved) / "mt_runner.yaml")
                Path(runner).write_text(f"parallelize:\n  n_workers: {args.ref_num_proc}\n  launcher: joblib\n")
            tools.append(Tool(
                "MIMIC_IV_MEDS",
                lambda src, view, out, exe=exe, runner=runner: [
                    str(exe), "spec=MIMIC-IV", f"output_dir={out}", "do_download=false", "dataset_key=demo",
                    f"input_dir={view / '2.2'}", *([f"stage_runner_fp={runner}"] if runner else [])],
                env=env, data_glob="data/*/*.parquet", stub_format="parquet",
                table_of=lambda lf, out: lf.select(table=__import__("polars").col("source_block")
                                                   .str.split("/").list.slice(0, 2).list.join("/"))))
    return tools, notes


def concept_map_dir(args) -> Path | None:
    if args.concept_maps:
        return Path(args.concept_maps)
    for venv in (args.ref_venv, args.mt_venv):
        if venv:
            for d in sorted(Path(venv).glob("lib/python3*/site-packages/meds_etl/mimic/concept_map")):
                return d
    try:  # meds_etl importable by this interpreter
        import importlib.util
        spec = importlib.util.find_spec("meds_etl")
        if spec and spec.origin:
            d = Path(spec.origin).parent / "mimic" / "concept_map"
            return d if d.is_dir() else None
    except Exception:
        pass
    return None


# ------------------------------------------------------------------------------ inputs
def raw_tables(src: Path) -> dict[str, Path]:
    out = {}
    for sub in ("hosp", "icu"):
        for f in sorted((src / sub).glob("*.csv*")):
            out[f"{sub}/{f.name.split('.csv')[0]}"] = f
    return out


# Types of stub columns for MIMIC_IV_MEDS (what MEDS-Extract infers from the real demo CSVs; all others string).
# Its joins need them: a header-only CSV is inferred as all-string and then fails, e.g. SchemaError
# "datatypes of join keys don't match - `hadm_id`: str on left does not match `hadm_id`: i64 on right".
STUB_INTS = {"subject_id", "hadm_id", "stay_id", "itemid", "icd_version", "drg_code", "drg_severity", "drg_mortality",
             "emar_seq", "pharmacy_id", "anchor_age", "anchor_year", "doses_per_24_hrs", "ndc", "orderid",
             "linkorderid", "seq_num", "caregiver_id", "transfer_id", "labevent_id", "specimen_id", "poe_seq",
             "microevent_id", "micro_specimen_id", "spec_itemid", "test_seq", "test_itemid", "org_itemid",
             "isolate_num", "ab_itemid", "hospital_expire_flag", "isopenbag", "continueinnextdept"}
STUB_FLOATS = {"valuenum", "amount", "rate", "patientweight", "totalamount", "originalamount", "originalrate", "los",
               "dilution_value", "ref_range_lower", "ref_range_upper", "ORIGINALAMOUNT", "ORIGINALRATE"}


def write_stub(path_base: Path, table: str, fmt: str) -> None:
    cols = MIMIC_COLUMNS[table].split(",")
    if fmt == "csv":
        with gzip.open(f"{path_base}.csv.gz", "wt") as f:
            f.write(",".join(cols) + "\n")
        return
    import pyarrow as pa
    import pyarrow.parquet as pq
    types = [pa.int64() if c in STUB_INTS else pa.float64() if c in STUB_FLOATS else pa.string() for c in cols]
    pq.write_table(pa.table({c: pa.array([], t) for c, t in zip(cols, types, strict=False)}), f"{path_base}.parquet")


def build_view(src: Path, view: Path, tool: Tool, args) -> list[str]:
    """view/2.2/{hosp,icu}: links to src's files + 0-row stubs for the tables `tool` needs and src lacks."""
    root = view / "2.2"
    for sub in ("hosp", "icu"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    have = raw_tables(src)
    for table, f in have.items():
        os.symlink(f.resolve(), root / table.split("/")[0] / f.name)
    stubbed = [t for t in NEEDS.get(tool.name, []) if t not in have]
    if not args.no_stub:
        for t in stubbed:
            write_stub(root / t, t, tool.stub_format)
    if tool.name == "MIMIC_IV_MEDS":
        cm = concept_map_dir(args)
        for name in CONCEPT_MAPS:
            if (cm / f"{name}.csv").exists():
                os.symlink((cm / f"{name}.csv").resolve(), root / f"{name}.csv")
    return stubbed


def warm_cache(src: Path) -> None:
    for f in raw_tables(src).values():
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def count_raw(src: Path) -> dict[str, int]:
    """Rows per raw table (CSV rows, quotes respected)."""
    import polars as pl
    out = {}
    for table, f in raw_tables(src).items():
        if table.split("/")[1].startswith("d_") or table in ("hosp/provider", "icu/caregiver"):
            continue
        try:
            out[table] = pl.scan_csv(f, infer_schema=False).select(pl.len()).collect().item()
        except Exception:
            out[table] = -1
    return out


def count_output(tool: Tool, out: Path) -> dict:
    """Rows, subjects and rows per source table of a tool's output data parquet."""
    import polars as pl
    files = sorted(out.glob(tool.data_glob))
    if not files:
        return {"rows": 0, "subjects": 0, "tables": {}}
    lf = pl.scan_parquet(files)
    rows = lf.select(pl.len()).collect().item()
    subjects = lf.select(pl.col("subject_id").n_unique()).collect().item()
    tables = {}
    if tool.tables_of:
        tables = tool.tables_of(out)
    elif tool.table_of:
        df = tool.table_of(lf, out).group_by("table").len().collect()
        tables = dict(zip(df["table"].to_list(), df["len"].to_list(), strict=False))
    return {"rows": rows, "subjects": subjects, "tables": tables}


# ------------------------------------------------------------------------------ main
def fmt_ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:6.2f}x" if a and b else "     -"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", default="demo,synth:2000,synth:10000",
                   help="comma-separated: demo, synth:N (synthetic, N patients), or a raw MIMIC-IV dir")
    p.add_argument("--repeats", default="3", help="runs per tool and input (median reported); one number, or "
                   "one per input (e.g. 3,3,2)")
    p.add_argument("--demo", default=str(DEFAULT_DEMO), help="the MIMIC-IV demo dir (default: %(default)s)")
    p.add_argument("--ours", help="our `ehrfm` executable (default: REPO/.venv/bin/ehrfm, else on PATH)")
    p.add_argument("--ref-venv", default="/tmp/refetl-venv", help="venv with meds_etl (bin/meds_etl_mimic); "
                   "else meds_etl_mimic on PATH (default: %(default)s)")
    p.add_argument("--mt-venv", default="/tmp/refetl-mt-venv", help="venv with MIMIC-IV-MEDS "
                   "(bin/meds-extract-run); else on PATH (default: %(default)s)")
    p.add_argument("--tools", default="meds_etl,MIMIC_IV_MEDS", help="references to run (default: %(default)s)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every tool (default: all)")
    p.add_argument("--ref-num-shards", type=int, default=100, help="meds_etl --num_shards (default: its 100)")
    p.add_argument("--ref-num-proc", type=int, default=1, help="meds_etl --num_proc / MEDS-transforms workers "
                   "(default: 1, their default)")
    p.add_argument("--concept-maps", help="dir with mimic-code concept_map CSVs for MIMIC_IV_MEDS")
    p.add_argument("--no-stub", action="store_true", help="give the references the input as is (no header-only "
                   "files for missing tables): shows why they fail")
    p.add_argument("--workdir", help="work dir (default: a temporary dir, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep outputs and logs")
    p.add_argument("--json", help="also write all figures to this JSON file")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ehrfm-bench-etlref-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.workdir_resolved = str(work)
    inputs = [s.strip() for s in args.inputs.split(",") if s.strip()]
    reps = [int(r) for r in args.repeats.split(",")]
    reps = reps * len(inputs) if len(reps) == 1 else reps
    if len(reps) != len(inputs):
        raise SystemExit("--repeats: give one number or one per input")
    tools, notes = make_tools(args)
    for n in notes:
        print(n, flush=True)
    n = args.threads
    env = {**os.environ, "POLARS_MAX_THREADS": str(n), "OMP_NUM_THREADS": str(n), "RAYON_NUM_THREADS": str(n),
           "PYTHONWARNINGS": "ignore"}
    pin = []
    if n < (os.cpu_count() or n) and shutil.which("taskset"):
        pin = ["taskset", "-c", f"0-{n - 1}"]
    print(f"threads per tool: {n}{f' (pinned to CPUs 0-{n - 1})' if pin else ''}; repeats: "
          f"{dict(zip(inputs, reps, strict=False))}; tools: {', '.join(t.name for t in tools)}; work dir: {work}", flush=True)

    results = []
    try:
        for inp, nrep in zip(inputs, reps, strict=False):
            source = input_source(inp, args, work, env)
            if source is not None:
                results.append(bench_input(*source, nrep, tools, args, env, pin, work))
                report_input(results[-1], tools)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print_summary(results, tools)
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(results), indent=2))


def input_source(inp: str, args, work: Path, env: dict) -> tuple[Path, str] | None:
    """(raw MIMIC-IV dir, label) of one --inputs item, synthesizing a synth:N cohort once (not
    timed); None (said) when the demo is missing."""
    if inp == "demo":
        src, label = Path(args.demo), "mimic-iv-demo-2.2"
        if not (src / "hosp").is_dir():
            print(f"[{label}] SKIPPED: no MIMIC-IV demo at {src} (--demo)", flush=True)
            return None
        return src, label
    if not inp.startswith("synth:"):
        src = Path(inp).resolve()
        return src, src.name
    npat = int(inp.split(":")[1])
    label, src = f"synth-{npat}", work / f"synth-{npat}" / "raw"
    if not (src / "hosp" / "patients.csv.gz").exists():
        shutil.rmtree(src.parent, ignore_errors=True)
        t0 = time.perf_counter()
        r = subprocess.run([*ours_command(args), "synth", "--out", str(src),
                            "--patients", str(npat), "--seed", "0"], env={**env, "EHRFM_QUIET": "1"},
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"ehrfm synth failed:\n{r.stderr[-2000:]}")
        print(f"[{label}] synthesized in {time.perf_counter() - t0:.1f}s (not timed)", flush=True)
    return src, label


def bench_input(src: Path, label: str, nrep: int, tools: list[Tool], args, env: dict, pin: list[str], work: Path) -> dict:
    """Every tool on one input, nrep rotated repeats: the input's result record (runs, counts)."""
    idir = work / label
    idir.mkdir(parents=True, exist_ok=True)
    views, stubbed = {}, {}
    for tool in tools[1:]:
        views[tool.name] = idir / f"view-{tool.name}"
        shutil.rmtree(views[tool.name], ignore_errors=True)
        stubbed[tool.name] = build_view(src, views[tool.name], tool, args)
        if stubbed[tool.name]:
            what = ("NOT stubbed (--no-stub)" if args.no_stub else
                    f"given 0-row {tool.stub_format} files with the MIMIC-IV columns")
            print(f"[{label}] {tool.name} needs tables the input lacks, {what}: "
                  f"{', '.join(stubbed[tool.name])}", flush=True)
    raw_rows = count_raw(src)
    warm_cache(src)
    runs = {t.name: [] for t in tools}
    counts = {}
    for r in range(nrep):
        order = tools[r % len(tools):] + tools[:r % len(tools)]
        for tool in order:
            out = idir / f"out-{tool.name}-{r}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = pin + tool.argv(src, views.get(tool.name, src), out)
            run = measure(cmd, {**env, **tool.env}, idir / f"{tool.name}-{r}.log", idir)
            runs[tool.name].append(run)
            status = "ok" if run.ok else f"FAILED ({run.error})"
            print(f"[{label}] repeat {r + 1}/{nrep} {tool.name:<14} {run.wall_s:8.2f} s  "
                  f"tree {run.tree_mib:7.0f} MiB  max1 {run.max1_mib:7.0f} MiB  {status}", flush=True)
            if run.ok and tool.name not in counts:
                counts[tool.name] = count_output(tool, out)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    stubs = sorted({t for v in stubbed.values() for t in v})
    return dict(input=label, raw_rows=raw_rows, stubbed=stubs, runs=runs, counts=counts,
                stub_mark="absent" if args.no_stub else "stub")


def med(runs: list[Run], key: str) -> float | None:
    ok = [getattr(r, key) for r in runs if r.ok]
    return statistics.median(ok) if ok else None


def report_input(res: dict, tools: list[Tool]) -> None:
    """Per source table: raw rows and the output rows of each tool."""
    names = [t.name for t in tools if t.name in res["counts"]]
    converted = {k for c in res["counts"].values() for k in c["tables"]}
    tables = sorted(set(res["raw_rows"]) | set(res["stubbed"]) | converted)
    print(f"\n[{res['input']}] output rows per source table (raw = CSV rows in the input; '-' = not converted "
          f"or absent; stub = absent from the input, a 0-row file given to the references)")
    print(f"  {'table':<26}{'raw':>10}" + "".join(f"{n:>15}" for n in names))
    for t in tables:
        raw = res["raw_rows"].get(t)
        cells = "".join(f"{res['counts'][n]['tables'].get(t, '-'):>15}" for n in names)
        rawc = res["stub_mark"] if t in res["stubbed"] else ("-" if raw is None else raw)
        print(f"  {t:<26}{rawc:>10}{cells}")
    print(f"  {'TOTAL rows (events)':<26}{'':>10}" + "".join(f"{res['counts'][n]['rows']:>15}" for n in names))
    print(f"  {'subjects':<26}{'':>10}" + "".join(f"{res['counts'][n]['subjects']:>15}" for n in names) + "\n",
          flush=True)


def print_summary(results: list[dict], tools: list[Tool]) -> None:
    print("\nSummary (median over repeats; ratio = reference / ours; tree = peak RSS of the process tree)")
    hdr = (f"{'input':<20}{'tool':<15}{'runs':>5}{'wall s':>9}{'[min':>8}{'max]':>8}{'tree MiB':>10}"
           f"{'max1 MiB':>10}{'rows out':>11}{'subjects':>9}{'time x':>9}{'RSS x':>9}")
    print(hdr)
    print("-" * len(hdr))
    for res in results:
        ours_t, ours_m = med(res["runs"]["ours"], "wall_s"), med(res["runs"]["ours"], "tree_mib")
        for tool in tools:
            runs = res["runs"][tool.name]
            ok = [r for r in runs if r.ok]
            c = res["counts"].get(tool.name, {})
            if not ok:
                err = runs[0].error if runs else "not run"
                print(f"{res['input']:<20}{tool.name:<15}{len(runs):>5}  FAILED: {err}")
                continue
            t, m = med(runs, "wall_s"), med(runs, "tree_mib")
            walls = [r.wall_s for r in ok]
            print(f"{res['input']:<20}{tool.name:<15}{len(ok):>5}{t:>9.2f}{min(walls):>8.2f}{max(walls):>8.2f}"
                  f"{m:>10.0f}{med(runs, 'max1_mib'):>10.0f}{c.get('rows', 0):>11}{c.get('subjects', 0):>9}"
                  + ("" if tool.name == "ours" else f"{fmt_ratio(t, ours_t):>9}{fmt_ratio(m, ours_m):>9}"))


def to_json(results: list[dict]) -> list[dict]:
    out = []
    for res in results:
        out.append({**res, "runs": {k: [dict(ok=r.ok, wall_s=r.wall_s, tree_mib=r.tree_mib, max1_mib=r.max1_mib,
                                              error=r.error) for r in v] for k, v in res["runs"].items()}})
    return out


if __name__ == "__main__":
    main()
