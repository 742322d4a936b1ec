"""Faults a newcomer met at the command line (a README walk-through by a helper, 2026-12-07).

- `ehrfm synth --out . --overwrite` (and `--out ''`, read as ".") failed with a traceback (ValueError from
  the temporary name), and synth, train, sweep plan and demo took `--out ''` for the working directory;
- argparse's prefix matching took `--worker 2` for `--workers` and `--over` for `--overwrite`, silently;
- a mistyped flag pointed at `ehrfm --help`, not the command's own help, and a `sweep plan` error was
  headed `ehrfm sweep`.
Each is checked on every command that has the flag, in-process (no training: every case is refused first).
"""

from __future__ import annotations

import pytest

from ehrfm.app.cli import build_parser, main
from ehrfm.cli_args import populate_all, subparsers

# One call per command with an --out, the other arguments valid enough to reach the --out check.
OUT_COMMANDS = {
    "synth": ["synth", "--patients", "10"],
    "etl": ["etl", "raw"],
    "tokenize": ["tokenize", "meds"],
    "train": ["train", "tok", "--n-layer", "1", "--d-model", "32", "--n-head", "2", "--tokens", "1000"],
    "sweep plan": ["sweep", "plan", "--tokens", "tok", "--budgets", "1e9"],
    "fit": ["fit", "results.csv"],
    "labels": ["labels", "meds", "--task", "all"],
    "audit": ["audit", "meds", "--labels", "labels"],
    "probe": ["probe", "run", "--tokens", "tok", "--labels", "l.parquet"],
    "finetune": ["finetune", "run", "--tokens", "tok", "--labels", "l.parquet"],
    "zeroshot": ["zeroshot", "run", "--tokens", "tok", "--labels", "l.parquet"],
    "baseline": ["baseline", "meds", "--labels", "l.parquet"],
    "export": ["export", "run"],
    "demo": ["demo"],
}


def one_error_line(capsys, argv) -> str:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, (argv, rc, err)
    return err


def test_every_out_flag_is_listed_here():
    """A command given an --out later gets its case above (or this test names it)."""
    parser = populate_all(build_parser())
    have = set()
    for name, sub in subparsers(parser).items():
        for sname, ssub in (subparsers(sub).items() or [(None, sub)]):
            p = ssub if sname else sub
            if any("--out" in a.option_strings for a in p._actions):
                have.add(f"{name} {sname}" if sname else name)
    assert have == set(OUT_COMMANDS), sorted(have)


@pytest.mark.parametrize("command", sorted(OUT_COMMANDS))
@pytest.mark.parametrize("out", ["", " ", ".", "..", "./", "/"])
def test_an_out_that_names_no_output_of_its_own_is_refused(command, out, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("a user's file\n")
    monkeypatch.chdir(work)
    for flags in ([], ["--overwrite"]):
        argv = OUT_COMMANDS[command] + ["--out", out] + (flags if command not in ("sweep plan", "train") else [])
        err = one_error_line(capsys, argv)
        says = "the output path is empty" if not out.strip() else "is the working directory or a directory above it"
        assert f"ehrfm {command}: error:" in err and says in err, (argv, err)
    assert sorted(p.name for p in work.iterdir()) == ["mine.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_the_working_directory_by_its_absolute_path_is_refused_too(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = one_error_line(capsys, ["synth", "--patients", "10", "--out", str(tmp_path), "--overwrite"])
    assert "is the working directory" in err and "(`cd ..`, then --out NAME), or a new directory inside it (--out ./out)" in err


def test_a_flag_cut_short_is_refused_naming_the_whole_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for argv, near in ((["synth", "--out", "raw", "--pat", "10"], "--patients"),
                       (["synth", "--out", "raw", "--patint", "10"], "--patients"),
                       (["etl", "raw", "--out", "meds", "--worker", "2"], "--workers"),
                       (["sweep", "plan", "--tokens", "tok", "--budgets", "1e9", "--out", "sw", "--sizs", "3"], "--sizes")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        command = "ehrfm sweep plan" if argv[0] == "sweep" else f"ehrfm {argv[0]}"
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert f"did you mean {near}" in err and f"(see `{command} --help`)" in err, err
    assert list(tmp_path.iterdir()) == []


def test_an_error_names_the_subcommand_it_came_from(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = one_error_line(capsys, ["sweep", "plan", "--tokens", "nowhere", "--budgets", "1e9", "--out", "sw"])
    assert err.startswith("ehrfm sweep plan: error:") and "nowhere" in err, err
    err = one_error_line(capsys, ["sweep", "status", "nowhere"])
    assert err.startswith("ehrfm sweep status: error:"), err


def test_train_overwrite_keeps_what_the_run_did_not_write(tok, tmp_path, capsys):
    """A break-it helper: `train --out r1 --overwrite` deleted a run trained inside r1 (r1/sub) and the user's notes,
    exit 0. A run dir keeps no list of its files, so --overwrite now refuses any entry a run does not write."""
    run = ["train", str(tok), "--n-layer", "1", "--d-model", "16", "--n-head", "2", "--context", "32",
           "--batch-size", "4", "--tokens", "256", "--eval-tokens", "256"]
    r1 = tmp_path / "r1"
    assert main(run + ["--out", str(r1)]) in (0, 1)
    (r1 / "notes.txt").write_text("mine\n")
    (r1 / "events.out.tfevents.1.host").write_bytes(b"")  # TensorBoard's, beside metrics.jsonl: the run's own
    err = one_error_line(capsys, run + ["--out", str(r1), "--overwrite"])
    assert "holds 1 entry that `ehrfm train` does not write there (notes.txt)" in err, err
    assert (r1 / "notes.txt").read_text() == "mine\n" and (r1 / "result.json").is_file()
    (r1 / "notes.txt").unlink()
    assert main(run + ["--out", str(r1), "--overwrite"]) in (0, 1)  # only its own entries: retrained
    assert (r1 / "result.json").is_file() and not (r1 / "events.out.tfevents.1.host").exists()


def test_demo_overwrite_keeps_what_the_demo_did_not_write(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / ".ehrfm-output").write_text("demo\n")
    (out / "demo_config.json").write_text("{}\n")
    (out / "report.md").write_text("# an earlier report\n")
    (out / "my_analysis.ipynb").write_text("{}\n")
    err = one_error_line(capsys, ["demo", "--quick", "--out", str(out), "--overwrite"])
    assert "holds 1 entry that `ehrfm demo` does not write there (my_analysis.ipynb)" in err, err
    assert sorted(p.name for p in out.iterdir()) == [".ehrfm-output", "demo_config.json", "my_analysis.ipynb", "report.md"]
