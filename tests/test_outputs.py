"""--overwrite replaces only ehrfm's own outputs, never a command's input or a user's directory.

Real stages on a small synthetic dataset (synth -> etl -> tokenize -> labels), run through the CLI
in this process; every refusal is one line (exit 2) and leaves every file as it was.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import private_synth_pipeline

from ehrfm.app.cli import main
from ehrfm.errors import UserError
from ehrfm.io import OUTPUT_MARKER


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    # a private copy: these tests try to make commands wipe their own inputs
    return private_synth_pipeline(tmp_path_factory.mktemp("outputs"), n_patients=120, seed=2, labels=True)


def digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes under `root`."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def refused(capsys, *argv, says: str) -> str:
    """Run `ehrfm argv...`; assert exit 2 with one line holding `says`; return the line."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and says in err, (argv, rc, err)
    return err


def test_overwrite_never_touches_the_commands_input(data, tmp_path, capsys):
    """Before: `etl RAW --out RAW --overwrite` deleted the raw data, `tokenize M --out M` the MEDS
    dataset, `labels M --task all --out M/data` its data."""
    raw, meds, tok, labels = data["raw"], data["meds"], data["tok"], data["labels"]
    before = {k: digest(data[k]) for k in ("raw", "meds", "tok", "labels")}
    shard = next((meds / "data" / "train").glob("*.parquet"))
    link = tmp_path / "link"
    link.symlink_to(raw)
    (tmp_path / "fit").mkdir()
    (tmp_path / "fit" / "results.csv").write_text("x\n")
    cases = [
        (["etl", raw, "--out", raw], "is the input"),
        (["etl", raw, "--out", raw / "hosp"], "lies inside the input"),
        (["etl", raw, "--out", data["base"]], "holds the input"),
        (["etl", raw, "--out", link], "is the input"),  # symlinks resolved
        (["tokenize", meds, "--out", meds], "is the input"),
        (["labels", meds, "--task", "all", "--out", meds / "data"], "lies inside the input"),
        (["labels", meds, "--task", "long_los", "--out", shard], "lies inside the input"),
        (["baseline", meds, "--labels", labels / "long_los.parquet", "--out", labels], "holds the input"),
        (["probe", tmp_path / "run", "--tokens", tok, "--labels", labels / "long_los.parquet", "--out", tok],
         "is the input"),
        (["audit", meds, "--labels", labels, "--out", labels / "long_los.json"], "lies inside the input"),
        (["export", tmp_path / "run", "--out", tmp_path / "run"], "is the input"),
        (["fit", tmp_path / "fit" / "results.csv", "--out", tmp_path / "fit"], "holds the input"),
    ]
    for argv, says in cases:
        refused(capsys, *argv, "--overwrite", says=says)
    from ehrfm.config import TrainConfig
    from ehrfm.train import train

    with pytest.raises(UserError, match="is the input"):
        train(TrainConfig(tokens_dir=str(tok), out_dir=str(tok), n_layer=1, d_model=32, n_head=2, context=64,
                          tokens=1000, batch_size=4, overwrite=True))
    assert {k: digest(data[k]) for k in before} == before
    assert (tmp_path / "fit" / "results.csv").read_text() == "x\n"


def test_overwrite_replaces_only_what_ehrfm_wrote(data, tmp_path, capsys):
    """Before: `etl RAW --out x --overwrite` wiped a user's directory x (thesis.txt and all)."""
    from ehrfm.app.demo import DemoConfig, run_demo
    from ehrfm.config import TrainConfig
    from ehrfm.train import train

    mine = tmp_path / "x"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious\n")
    for argv in (["etl", data["raw"], "--out", mine], ["tokenize", data["meds"], "--out", mine],
                 ["labels", data["meds"], "--task", "all", "--out", mine]):
        err = refused(capsys, *argv, "--overwrite", says=f"output {mine} is a directory ehrfm did not write")
        assert "remove it by hand if it is really an old ehrfm output" in err
    with pytest.raises(UserError, match="ehrfm did not write"):
        train(TrainConfig(tokens_dir=str(data["tok"]), out_dir=str(mine), n_layer=1, d_model=32, n_head=2, context=64,
                          tokens=1000, batch_size=4, overwrite=True))
    for overwrite in (True, False):  # a demo neither deletes nor fills a directory it did not write
        with pytest.raises(UserError, match="ehrfm did not write"):
            run_demo(DemoConfig(out=str(mine)), overwrite=overwrite)
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.txt"]
    assert (mine / "thesis.txt").read_text() == "precious\n"
    # what ehrfm wrote carries the marker, and --overwrite replaces it
    out = tmp_path / "labels"
    assert main(["labels", str(data["meds"]), "--task", "all", "--out", str(out)]) == 0
    assert (out / OUTPUT_MARKER).read_text() == "labels\n"
    (out / "stale.parquet").write_text("old")
    assert main(["labels", str(data["meds"]), "--task", "all", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "stale.parquet").exists() and (out / "long_los.parquet").is_file()


def test_audit_out_is_refused_when_it_exists_unless_overwrite(data, tmp_path, capsys):
    """Before: `audit --out existing.json` replaced the file silently, unlike every other command."""
    out = tmp_path / "audit.json"
    out.write_text("mine\n")
    argv = ["audit", data["meds"], "--labels", data["labels"], "--out", out]
    refused(capsys, *argv, says=f"output {out} already exists; pass --overwrite to replace it")
    assert out.read_text() == "mine\n"
    capsys.readouterr()
    assert main([str(a) for a in argv] + ["--overwrite"]) in (0, 1)  # 1: leakage found (the audit's verdict)
    assert set(json.loads(out.read_text())["tasks"]) == {"in_hospital_mortality", "long_los", "icu_admission",
                                                         "readmission_30d"}


def test_overwrite_replaces_only_an_output_of_the_same_command(data, tmp_path, capsys):
    """Before: `ehrfm train --out MEDS --overwrite` deleted a MEDS dataset (hours of ETL at full scale)
    without a word and left a run dir in its place; any stage's --overwrite replaced any other stage's
    output, the demo's too. Now --overwrite replaces only an earlier output of the same command; another
    command's output is refused in one line naming both, and nothing is touched."""
    import shutil

    from ehrfm.app.demo import DemoConfig, run_demo
    from ehrfm.config import TrainConfig
    from ehrfm.train import train

    meds, tok, labels = (tmp_path / n for n in ("meds", "tok", "labels"))
    for name, path in (("meds", meds), ("tok", tok), ("labels", labels)):
        shutil.copytree(data[name], path)
    before = {p: digest(p) for p in (meds, tok, labels)}
    cases = [
        (["tokenize", data["meds"], "--out", labels], "labels", "tokenize"),
        (["labels", data["meds"], "--task", "all", "--out", tok], "tokenize", "labels"),
        (["etl", data["raw"], "--out", tok], "tokenize", "etl"),
        (["baseline", data["meds"], "--labels", data["labels"] / "long_los.parquet", "--out", meds], "etl", "baseline"),
    ]
    for argv, made_by, command in cases:
        refused(capsys, *argv, "--overwrite", says=f"holds the output of `ehrfm {made_by}`, not of `ehrfm {command}`; "
                                                    f"--overwrite replaces only an earlier output of `ehrfm {command}`")
    with pytest.raises(UserError, match="holds the output of `ehrfm etl`, not of `ehrfm train`"):
        train(TrainConfig(tokens_dir=str(data["tok"]), out_dir=str(meds), n_layer=1, d_model=32, n_head=2, context=64,
                          tokens=1000, batch_size=4, overwrite=True))
    with pytest.raises(UserError, match="holds the output of `ehrfm tokenize`, not a demo"):
        run_demo(DemoConfig(out=str(tok), patients=50, budgets=[1e9, 2e9, 4e9]), overwrite=True)
    assert {p: digest(p) for p in before} == before
    # the same command's earlier output is still replaced
    assert main(["labels", str(data["meds"]), "--task", "all", "--out", str(labels), "--overwrite"]) == 0
    assert (labels / OUTPUT_MARKER).read_text() == "labels\n"


def test_a_head_variant_overwrites_its_own_commands_output(tmp_path):
    """`ehrfm finetune` marks its output finetune_head or finetune_full: `finetune --full --overwrite` over a
    head-only finetune's output is the same command and must not be refused (after hours of training);
    a probe's output is another command's."""
    from ehrfm.io import atomic_dir, check_overwrite, mark_output

    out = tmp_path / "ft"
    out.mkdir()
    mark_output(out, "finetune_head")
    check_overwrite(out, True, command="finetune")
    with atomic_dir(out, overwrite=True, command="finetune_full") as tmp:
        (tmp / "metrics.json").write_text("{}")
    assert (out / OUTPUT_MARKER).read_text() == "finetune_full\n"
    mark_output(out, "probe")
    with pytest.raises(UserError, match="holds the output of `ehrfm probe`, not of `ehrfm finetune_full`"), \
            atomic_dir(out, overwrite=True, command="finetune_full"):
        pass
