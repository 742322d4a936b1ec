"""Contracts the docs state and the code must keep (newcomer review, fix-contract)."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY310 = Path("/root/.pyenv/versions/3.10.13/bin/python3.10")

# --- item 1: requires-python >= 3.10 -------------------------------------------------------------

# Names that exist only from Python 3.11 on, by the module they are imported from.
PY311_ONLY = {
    "typing": {"Self", "Never", "LiteralString", "NotRequired", "Required", "assert_never", "reveal_type",
               "Unpack", "TypeVarTuple", "dataclass_transform", "assert_type", "override"},
    "enum": {"StrEnum", "verify", "member", "nonmember", "global_enum", "ReprEnum", "EnumCheck", "FlagBoundary",
             "show_flag_values", "property"},
    "datetime": {"UTC"},
    "asyncio": {"TaskGroup", "timeout", "Runner"},
    "contextlib": {"chdir"},
    "hashlib": {"file_digest"},
}
PY311_MODULES = {"tomllib", "wsgiref.types"}
PY311_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}


def repo_py_files() -> list[Path]:
    # Our code only: not build outputs, nor any hidden dir (.venv, .git, .pytest_cache, whose cached
    # ACES venv holds Python 3.11 site-packages), nor an installed package tree.
    skip = {"build", "dist", "__pycache__", "site-packages"}

    def ours(p: Path) -> bool:
        parts = p.relative_to(ROOT).parts[:-1]
        return not skip.intersection(parts) and not any(part.startswith(".") for part in parts)

    return sorted(p for p in ROOT.rglob("*.py") if ours(p))


def py311_uses(path: Path) -> list[str]:
    """3.11-only stdlib names a file uses at run time (imports outside `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if id(node) in guarded:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in PY311_MODULES:
                found.append(f"{where} imports {node.module}")
            for alias in node.names:
                if alias.name in PY311_ONLY.get(node.module, ()):
                    found.append(f"{where} imports {node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found += [f"{where} imports {a.name}" for a in node.names if a.name in PY311_MODULES]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.attr in PY311_ONLY.get(node.value.id, ()):
                found.append(f"{where} uses {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in PY311_BUILTINS:
            found.append(f"{where} uses {node.id}")
        elif getattr(ast, "TryStar", None) is not None and isinstance(node, ast.TryStar):
            found.append(f"{where} uses except*")
    return found


def test_no_python311_only_stdlib_names():
    files = repo_py_files()
    assert len(files) > 100, files  # the walk found the repository
    bad = [u for p in files for u in py311_uses(p)]
    assert bad == [], "requires-python is >=3.10 but these need 3.11+:\n" + "\n".join(bad)


def test_py311_checker_catches_the_old_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    f = tmp_path / "m.py"
    f.write_text("from typing import Self, Any\nfrom enum import StrEnum\nimport tomllib\nimport datetime\n"
                 "x = datetime.UTC\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from typing import Never\n")
    assert py311_uses(f) == ["m.py:1 imports typing.Self", "m.py:2 imports enum.StrEnum", "m.py:3 imports tomllib",
                             "m.py:5 uses datetime.UTC"]


@pytest.mark.skipif(not PY310.exists() and shutil.which("python3.10") is None, reason="no python3.10 here")
def test_every_module_compiles_and_base_imports_on_python310(tmp_path):
    py = str(PY310) if PY310.exists() else shutil.which("python3.10")
    files = [str(p) for p in repo_py_files()]
    # byte-compile in memory (what py_compile does, without writing .pyc files into the repository)
    code = ("import sys\nbad = []\nfor f in sys.argv[1:]:\n    try:\n"
            "        compile(open(f, encoding='utf-8').read(), f, 'exec', dont_inherit=True)\n"
            "    except SyntaxError as e:\n        bad.append(f'{f}: {e}')\nprint('\\n'.join(bad))\n"
            "sys.exit(1 if bad else 0)\n")
    r = subprocess.run([py, "-c", code, *files], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    # the torch-free base modules import on a bare 3.10 (no third-party packages), Status as StrEnum did
    probe = ("import json; from ehrfm.results import Status; from ehrfm.config import ModelConfig; c = Status.COMPLETED\n"
             "print(json.dumps([str(c), f'{c}', f'{c:>10}', '%s' % c, c == 'completed', json.dumps({c: c})]))")
    r = subprocess.run([py, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == ["completed", "completed", " completed", "completed", True,
                                    '{"completed": "completed"}']


def test_status_prints_and_serialises_as_its_value():
    from ehrfm.results import Status
    c = Status.DIVERGED
    assert [str(c), f"{c}", f"{c:<9}|", "%s" % c,  # noqa: UP031
        format(c)] == ["diverged", "diverged", "diverged |", "diverged", "diverged"]
    assert json.dumps({"status": c, c: 1}) == '{"status": "diverged", "diverged": 1}'
    assert c == "diverged" and Status("diverged") is c and isinstance(c, str) and hash(c) == hash("diverged")


# --- item 2: `ehrfm train --eval-batch-size` (README: a resume may change it) ----------------------

TRAIN_ARGV = ["train", "TOK", "--out", "RUN", "--n-layer", "2", "--d-model", "64", "--n-head", "2", "--tokens", "4096",
              "--batch-size", "8"]


def _train_config(extra):
    from ehrfm.app.cli import build_parser
    from ehrfm.cli_args import build, populate_all
    from ehrfm.config import TrainConfig

    args = populate_all(build_parser()).parse_args(TRAIN_ARGV + extra)
    return build(TrainConfig, args)


def test_train_eval_batch_size_reaches_the_config():
    cfg = _train_config(["--micro-batch-size", "4", "--eval-batch-size", "16"])
    assert (cfg.eval_batch_size, cfg.micro_batch_size, cfg.batch_size) == (16, 4, 8)
    assert _train_config([]).eval_batch_size == 0  # the default: the micro batch size


def test_train_eval_batch_size_is_validated_like_micro_batch_size(capsys):
    from ehrfm.errors import UserError

    for flag in ("--micro-batch-size", "--eval-batch-size"):
        with pytest.raises(SystemExit) as e:  # not a whole number: argparse's usage error
            _train_config([flag, "2.5"])
        assert e.value.code == 2
        assert f"argument {flag}: invalid int value: '2.5'" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"eval_batch_size must be >= 0 \(got -1\)"):
        _train_config(["--eval-batch-size", "-1"])


# --- item 3: the end-of-run metrics.jsonl line has lr (DESIGN: step, tokens, train_loss, lr, val_loss) -------

def test_last_metrics_line_has_the_final_lr(tok, tmp_path):
    from test_train import cfg_for

    from ehrfm.train import lr_at, train

    cfg = cfg_for(tok, tmp_path / "run", n_layer=1, d_model=16, tokens=2048, eval_tokens=1024, lr=1e-3,
                  min_lr_ratio=0.1, warmup_steps=1)
    res = train(cfg)
    assert res["status"] == "completed" and res["steps"] == 4  # 2048 tokens / (8 rows * 64)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 4]
    last = lines[-1]
    assert set(last) == {"step", "tokens", "train_loss", "lr", "val_loss"}
    assert last["val_loss"] == res["val_loss"] and last["tokens"] == 2048
    # the lr of the last optimizer step: the cosine schedule's end, min_lr_ratio * lr, as on the step-4 line
    assert last["lr"] == lines[-2]["lr"] == lr_at(3, 4, cfg) == pytest.approx(1e-4)
    assert [m["lr"] for m in lines[:-1]] == [lr_at(k, 4, cfg) for k in range(4)]


def test_resume_truncation_still_drops_the_end_of_run_line(tmp_path):
    """A run killed after its final checkpoint, before result.json, writes its end-of-run line again:
    the truncation must drop the old one though it now carries lr (it is the one without grad_norm)."""
    from ehrfm.loggers import truncate_metrics

    p = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "tokens": 512, "train_loss": 3.5, "lr": 1e-3, "grad_norm": 2.0, "tokens_per_s": 9.0},
            {"step": 2, "tokens": 1024, "train_loss": 3.1, "lr": 1e-4, "grad_norm": 1.5, "tokens_per_s": 9.0},
            {"step": 2, "tokens": 1024, "train_loss": 3.1, "lr": 1e-4, "val_loss": 3.0},  # end of run (new form)
            {"step": 2, "tokens": 1024, "train_loss": 3.1, "val_loss": 3.0}]  # end of run (older ehrfm)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    truncate_metrics(p, 2)
    assert [json.loads(s) for s in p.read_text().splitlines()] == rows[:2]


# --- item 4: what sweeps shares with analysis lives in ehrfm/ (stages meet only at files) ----------

def test_shared_law_checks_are_one_object_under_the_old_names():
    import analysis.laws
    import analysis.recommend
    import analysis.table
    from ehrfm import law_checks

    assert analysis.table.BUDGET_SAME_DECADES is law_checks.BUDGET_SAME_DECADES == 4.3e-4
    assert analysis.recommend.trust is law_checks.trust and analysis.laws.edge_note is law_checks.edge_note
    assert analysis.recommend.NO_INTERVALS is law_checks.NO_INTERVALS
    fits = {"approach2": {"a": 0.5, "a_ci": [0.4, 0.6], "b": 0.5, "b_ci": [-0.1, 0.9]}, "inputs": {"bootstrap": 100}}
    assert law_checks.trust(fits, 2) == (False, "the interval of b = 0.5 [-0.1, 0.9] includes 0")
    src = (ROOT / "sweeps" / "plan.py").read_text()
    assert "from analysis" not in src and "import analysis" not in src


# --- item 5: `train --help` names every stop signal the trainer checkpoints on --------------------

def test_train_help_names_sighup(capsys):
    from ehrfm.app.cli import main
    from ehrfm.train import STOP_UNLESS_IGNORED

    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert [s.name for s in STOP_UNLESS_IGNORED] == ["SIGHUP"]
    assert "SIGTERM/SIGUSR1, SIGHUP (a closed terminal or ssh session; not when ignored, as under nohup) or a first " \
           "Ctrl-C: checkpoint and exit 3" in text


# --- item 6: the demo prints "collected N runs into ..." once, not again for an unchanged sweep -----

def _fake_sweep_stages(monkeypatch, tmp_path, plans):
    """The demo's stage functions replaced by fakes that log their calls; `plans`: run ids each re-plan gives."""
    import polars as pl

    import analysis.fit
    import sweeps.collect
    import sweeps.launch
    import sweeps.plan
    from ehrfm.app import demo
    from ehrfm.errors import UserError

    calls, state = [], {"runs": ["r1", "r2"]}
    results = tmp_path / "results.parquet"
    pl.DataFrame({"run_id": ["r1", "r2"], "budget": [1e12, 1e12]}).write_parquet(results)

    def collect(sweep, **kw):
        calls.append("collect")
        print(f"collected {len(state['runs'])} runs into {results}")
        return results

    def plan(cfg, tok, sweep, budgets, centre_from=None, bracket_from=None, warned=None):
        calls.append("plan")
        if bracket_from is not None:
            state["runs"] = plans.pop(0)
        return None, [{"run_id": r} for r in state["runs"]], []

    def no_fit(*a, **k):
        raise UserError("no law (test)")

    monkeypatch.setattr(sweeps.collect, "collect_sweep", collect)
    monkeypatch.setattr(sweeps.plan, "load_sweep", lambda sweep: (None, [{"run_id": r} for r in state["runs"]]))
    monkeypatch.setattr(sweeps.launch, "launch_sweep", lambda sweep, launch: calls.append("launch"))
    monkeypatch.setattr(demo, "_launch_settled", lambda sweep, launch: calls.append("launch"))  # (test_demo_settle.py)
    monkeypatch.setattr(demo, "_plan", plan)
    monkeypatch.setattr(analysis.fit, "fit_results", no_fit)
    return calls


def test_demo_first_stage_collects_once_when_bracketing_adds_nothing(monkeypatch, tmp_path, capsys):
    from types import SimpleNamespace

    from ehrfm.app import demo

    calls = _fake_sweep_stages(monkeypatch, tmp_path, plans=[["r1", "r2"]])
    cfg = SimpleNamespace(budgets=[1e12, 1e13], first_stage=1, bracket=2, seed=0, tokens_per_param=20)
    assert demo._first_stage(cfg, demo._Stages(), tmp_path, tmp_path, None, tmp_path / "fit") is None
    out = capsys.readouterr().out
    assert calls == ["plan", "launch", "collect", "plan"]  # the bracketing's collect is stage 1's results
    assert out.count("collected 2 runs into") == 1, out


def test_demo_bracket_collects_again_when_its_replan_changed_the_sweep(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from ehrfm.app import demo

    # round 1 adds r3 (launched), round 2 adds nothing: its collect is the sweep's latest -> reused
    calls = _fake_sweep_stages(monkeypatch, tmp_path, plans=[["r1", "r2", "r3"], ["r1", "r2", "r3"]])
    cfg = SimpleNamespace(bracket=3)
    assert demo._bracket(cfg, demo._Stages(), tmp_path, tmp_path, None, [1e12], None, "") == tmp_path / "results.parquet"
    assert calls == ["collect", "plan", "launch", "collect", "plan"]
    # a re-plan that drops a run changes the sweep after the collect: the caller must collect again
    calls = _fake_sweep_stages(monkeypatch, tmp_path, plans=[["r1"]])
    assert demo._bracket(cfg, demo._Stages(), tmp_path, tmp_path, None, [1e12], None, "") is None
    assert calls == ["collect", "plan"]


# --- item 7: after a stop, `sweep launch` counts a job that finished anyway by its result ----------

def test_launch_stop_line_counts_a_finished_job_as_finished(tmp_path):
    from types import SimpleNamespace

    from ehrfm.results import RunResult, Status, write_result
    from sweeps.launch import _stopped_line

    jobs = [SimpleNamespace(run_dir=str(tmp_path / r)) for r in ("a", "b", "c", "d")]
    for j in jobs:
        Path(j.run_dir).mkdir()
    write_result(tmp_path / "a", RunResult(Status.COMPLETED, val_loss=2.5, n_params=1000))  # finished in the grace
    (tmp_path / "b" / "checkpoint").mkdir()
    (tmp_path / "b" / "checkpoint" / "state.json").write_text('{"step": 3}')
    write_result(tmp_path / "c", RunResult(Status.FAILED, error="boom"))
    assert _stopped_line(tmp_path, jobs[:3]) == (
        f"interrupted: 1 running jobs checkpointed; 1 completed, 1 failed before the stop; "
        f"`ehrfm sweep launch {tmp_path} --executor local` resumes the rest")
    assert _stopped_line(tmp_path, jobs[1:2]).startswith("interrupted: 1 running jobs checkpointed; `ehrfm sweep launch")
    # a job stopped while its trainer started (no checkpoint, d) was called checkpointed; status then said lost
    assert _stopped_line(tmp_path, jobs[1:]) == (
        f"interrupted: 1 running jobs checkpointed, 1 stopped before their first checkpoint (trained again from their "
        f"start); 1 failed before the stop; `ehrfm sweep launch {tmp_path} --executor local` resumes the rest")
    # inside the demo the demo's own command resumes the study (`sweep launch` finished one stage's runs only)
    from sweeps.launch import resumed_by

    with resumed_by("ehrfm demo --quick --out q1"):
        assert _stopped_line(tmp_path, jobs[1:2]).endswith("; `ehrfm demo --quick --out q1` resumes the rest")
    assert _stopped_line(tmp_path, jobs[1:2]).endswith(f"`ehrfm sweep launch {tmp_path} --executor local` resumes the rest")


# --- item 8: sweeps/README.md names the columns the tables have, and the run id's rounded budget ---

def test_sweeps_readme_lists_real_plan_and_results_columns_and_the_rounded_run_id_budget():
    import re

    from ehrfm.config import TrainConfig
    from ehrfm.tables import RESULTS_COLUMNS
    from sweeps.plan import PLAN_COLUMNS, SCHEDULE_COLUMNS, run_id_for

    text = (ROOT / "sweeps" / "README.md").read_text()
    block = text[text.index("## Sweep dir"):]
    plan = block[block.index("plan.parquet"):block.index("runs/<run_id>/")]
    listed = set(re.findall(r"[a-z_]+", plan.split(":", 1)[1].split("(sweeps.plan")[0])) - {"the", "shape"}
    assert listed == set(PLAN_COLUMNS + SCHEDULE_COLUMNS)
    results = block[block.index("results.parquet       collect"):].splitlines()[0]
    assert "error, the shape (n_layer, d_model, n_head, context)" in results
    assert {"n_layer", "d_model", "n_head", "context"} <= {c for c, _ in RESULTS_COLUMNS} and "shape" not in dict(RESULTS_COLUMNS)
    cfg = TrainConfig(tokens_dir="", out_dir="", n_layer=4, d_model=256, n_head=4, tokens=1)
    assert run_id_for("fp", 3.16e15, cfg).startswith("C3e15_L4_D256_") and "(3.16e15 FLOPs reads `C3e15`" in text
    assert run_id_for("fp", 1.5e15, cfg).startswith("C2e15_L4_D256_") and "1.5e15 `C2e15`" in text


def test_resume_truncation_keeps_lines_after_a_damaged_one_and_says_what_it_dropped(tmp_path, capsys):
    """A damaged line in the middle of metrics.jsonl took every later line with it, silently (the run's
    logged curve lost steps before its checkpoint for good); a cut last line was dropped without a word."""
    from ehrfm.loggers import truncate_metrics

    p = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "tokens": 512 * s, "train_loss": 4.0 - 0.1 * s, "lr": 1e-3, "grad_norm": 1.0} for s in (1, 2, 3, 4)]
    lines = [json.dumps(r) for r in rows]
    p.write_text("\n".join([lines[0], lines[1][:17], lines[2], lines[3]]) + "\n")
    kept, n_before, step_before = truncate_metrics(p, 3)
    assert kept == [rows[0], rows[2]] and (n_before, step_before) == (3, 4)
    assert [json.loads(s) for s in p.read_text().splitlines()] == [rows[0], rows[2]]
    err = capsys.readouterr().err
    assert "1 line(s) are not metrics lines (line 2)" in err and "2 line(s) up to step 3 kept" in err
    assert '"step": 2' not in err  # the line's text is never printed

    p.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # a hard kill mid-write
    kept, _, _ = truncate_metrics(p, 3)
    assert kept == rows[:3] and "its last line was cut (a hard kill?)" in capsys.readouterr().err


def test_resume_without_its_metrics_log_says_the_steps_it_lost(tmp_path, capsys):
    """A metrics.jsonl deleted before a resume: steps 1-20 vanished from the log without a word."""
    from ehrfm.loggers import truncate_metrics

    p = tmp_path / "metrics.jsonl"
    assert truncate_metrics(p, 0) == ([], 0, 0) and capsys.readouterr().err == ""  # a fresh run has no log yet
    assert truncate_metrics(p, 20) == ([], 0, 0)
    assert capsys.readouterr().err.splitlines() == [
        f"ehrfm: warning: {p} is missing: the log of steps 1-20 is lost; the run resumes from its checkpoint and logs "
        "from step 21"]
