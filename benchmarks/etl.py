"""Benchmark: synth -> etl -> tokenize at growing sizes; events/s, peak RSS, log-log scaling slope.

    python benchmarks/etl.py [--sizes 2000,10000,40000] [--workdir DIR] [--keep] [--json OUT]
    python benchmarks/etl.py --sizes 10000,30000,100000,300000     # the issue-12 scale check
    python benchmarks/etl.py --sizes 300000 --merge small.json      # fit with runs made earlier
    python benchmarks/etl.py --sizes 0 --merge a.json --merge b.json  # refit only, nothing run

Each stage runs as its own `ehrfm` process so that its peak RSS (ru_maxrss from wait4: the
largest process of the stage's tree, as `/usr/bin/time -v` reports it) is its own. `ehrfm etl`
runs worker processes (--workers), so the whole tree's RSS (the sum over the stage process and
its descendants, sampled from /proc every 0.1 s; `*_tree_rss_mib`) is recorded beside it: that
is the figure issue 12's 3 GiB bound is about. The 1-minute
load average before and after each stage is printed beside it: on a shared machine the wall
times mean little without it.
Goals: time grows at most ~linearly in events (log-log slope <= 1.1), peak RSS sub-linearly
(issue 3); at 300k patients every stage peaks at <= 3 GiB and etl takes <= 240 s (issue 12).
The fitted power laws are projected to the full MIMIC-IV's event count (`--project-events`),
printed beside the reference ETL's published figures (MIMIC_IV_MEDS with MEDS-Extract 0.7 on
MIMIC-IV 3.1, 364,627 subjects: 32 min at 20.3 GB peak RSS; Medical-Event-Data-Standard/
MIMIC_IV_MEDS pull request 69).
Not a test: timings depend on the machine and its load; the figures go into the notes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Rows of MIMIC-IV 2.2's event tables (hosp: admissions, diagnoses_icd, drgcodes, emar, hcpcsevents,
# labevents, microbiologyevents, omr, patients, pharmacy, prescriptions, procedures_icd, services,
# transfers; icu: icustays, chartevents, datetimeevents, inputevents, outputevents, procedureevents),
# from MIT-LCP/mimic-code mimic-iv/buildmimic/postgres/validate.sql: about one event per row.
FULL_MIMIC_IV_EVENTS = 527_825_446
REFERENCE = {"minutes": 32.0, "peak_rss_gb": 20.3}


def tree_rss(pid: int) -> int:
    """Resident bytes of process `pid` and all its descendants now (Linux /proc; 0 elsewhere)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
            except (OSError, IndexError, ValueError):  # exited meanwhile
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
        todo += children.get(p, [])
    return total


def run_stage(args: list[str]) -> tuple[float, float, str, float, float]:
    """Run `ehrfm ARGS`; return wall seconds, peak RSS in MiB (the largest process), its stdout
    summary line, its CPU seconds (user + sys of the whole tree, from wait4: less sensitive than
    wall time to other processes' load) and the whole tree's peak RSS in MiB (sampled)."""
    import threading

    env = {**os.environ, "EHRFM_QUIET": "1"}
    print(f"  ehrfm {args[0]}: load average {os.getloadavg()[0]:.1f} before", end="", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ehrfm", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)
    peak, done = [0], threading.Event()

    def sample():
        while not done.wait(0.1):
            peak[0] = max(peak[0], tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    seconds = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ehrfm {' '.join(args)} failed:\n{err}")
    cpu = usage.ru_utime + usage.ru_stime
    tree = max(peak[0] / 2**20, usage.ru_maxrss / 1024)
    print(f", {os.getloadavg()[0]:.1f} after: {seconds:.1f}s ({cpu:.1f} CPU s, {cpu / seconds:.2f} cores), "
          f"{usage.ru_maxrss / 1024:.0f} MiB largest process, {tree:.0f} MiB whole tree", flush=True)
    return seconds, usage.ru_maxrss / 1024, out.strip().splitlines()[-1], cpu, tree


def _etl_rss(row: dict) -> float:
    """The etl stage's peak RSS in MiB: its whole process tree (workers), else (older runs) its largest process."""
    return row.get("etl_tree_rss_mib", row["etl_rss_mib"])


def slope(xs, ys) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=False)) / sum((a - mx) ** 2 for a in lx)


def project(rows: list[dict], slopes: dict, events: float) -> dict:
    """Extrapolate time (minutes) and peak RSS (GB, 1e9 bytes like the reference) to `events`
    along the fitted log-log slope, anchored at the largest run: y(E) = y_max * (E / E_max)^slope."""
    last = max(rows, key=lambda r: r["events"])
    ratio = events / last["events"]
    out = {"events": events, "reference": REFERENCE}
    for stage in ("etl", "tokenize"):
        rss = _etl_rss(last) if stage == "etl" else last[f"{stage}_rss_mib"]
        out[f"{stage}_minutes"] = last[f"{stage}_s"] * ratio ** slopes[f"{stage}_time_slope"] / 60
        out[f"{stage}_rss_gb"] = rss * 2**20 * ratio ** slopes[f"{stage}_rss_slope"] / 1e9
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2000,10000,40000", help="patients per run (comma-separated)")
    p.add_argument("--workdir", help="where to write the datasets (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the datasets")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--merge", action="append", default=[],
                   help="add the runs of an earlier --json file to the fits (repeatable)")
    p.add_argument("--project-events", type=float, default=FULL_MIMIC_IV_EVENTS,
                   help="event count to project the fitted power laws to (default: full MIMIC-IV 2.2, %(default).0f)")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ehrfm-bench-etl-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for n in [n for n in sizes if n > 0]:
            d = work / f"n{n}"
            shutil.rmtree(d, ignore_errors=True)
            s_t, s_rss, _, s_cpu, s_tree = run_stage(["synth", "--out", str(d / "raw"), "--patients", str(n),
                                                      "--seed", "0"])
            e_t, e_rss, _, e_cpu, e_tree = run_stage(["etl", str(d / "raw"), "--out", str(d / "meds")])
            k_t, k_rss, _, k_cpu, k_tree = run_stage(["tokenize", str(d / "meds"), "--out", str(d / "tok")])
            stats = json.loads((d / "tok" / "stats.json").read_text())
            events = sum(v["events"] for v in stats["splits"].values())
            tokens = sum(v["tokens"] for v in stats["splits"].values())
            rows.append(dict(patients=n, events=events, tokens=tokens, synth_s=s_t, etl_s=e_t, tokenize_s=k_t,
                             synth_rss_mib=s_rss, etl_rss_mib=e_rss, tokenize_rss_mib=k_rss,
                             synth_cpu_s=s_cpu, etl_cpu_s=e_cpu, tokenize_cpu_s=k_cpu,
                             synth_tree_rss_mib=s_tree, etl_tree_rss_mib=e_tree, tokenize_tree_rss_mib=k_tree,
                             load_average=os.getloadavg()[0]))
            print(f"{n:>7} patients {events:>10} events {tokens:>10} tokens | synth {s_t:6.1f}s {s_rss:6.0f} MiB | "
                  f"etl {e_t:6.1f}s {events / e_t:>9.0f} ev/s {e_tree:6.0f} MiB (tree) | "
                  f"tokenize {k_t:6.1f}s {events / k_t:>9.0f} ev/s {k_rss:6.0f} MiB", flush=True)
            if not args.keep:
                shutil.rmtree(d / "raw", ignore_errors=True)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    for f in args.merge:
        rows += json.loads(Path(f).read_text())["runs"]
    rows.sort(key=lambda r: r["events"])
    if args.json and len(rows) < 2:
        Path(args.json).write_text(json.dumps({"runs": rows}, indent=2))
    if len(rows) >= 2:
        ev = [r["events"] for r in rows]
        summary = {
            "etl_time_slope": slope(ev, [r["etl_s"] for r in rows]),
            "tokenize_time_slope": slope(ev, [r["tokenize_s"] for r in rows]),
            "etl+tokenize_time_slope": slope(ev, [r["etl_s"] + r["tokenize_s"] for r in rows]),
            "etl_rss_slope": slope(ev, [_etl_rss(r) for r in rows]),
            "tokenize_rss_slope": slope(ev, [r["tokenize_rss_mib"] for r in rows]),
        }
        print("log-log slopes vs events: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
        print(f"goal: time slope <= 1.1 -> {'met' if summary['etl+tokenize_time_slope'] <= 1.1 else 'NOT met'}; "
              f"RSS sub-linear (slope < 1) -> {'met' if max(summary['etl_rss_slope'], summary['tokenize_rss_slope']) < 1 else 'NOT met'}")
        projection = project(rows, summary, args.project_events)
        print(f"projected to {args.project_events:.3g} events (power law through the largest run): "
              f"etl {projection['etl_minutes']:.0f} min at {projection['etl_rss_gb']:.1f} GB, tokenize "
              f"{projection['tokenize_minutes']:.0f} min at {projection['tokenize_rss_gb']:.1f} GB; reference ETL: "
              f"{REFERENCE['minutes']:.0f} min at {REFERENCE['peak_rss_gb']} GB")
        if args.json:
            Path(args.json).write_text(json.dumps({"runs": rows, "slopes": summary, "projection": projection}, indent=2))


if __name__ == "__main__":
    main()
