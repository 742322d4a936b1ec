"""--overwrite replaces only ehrfm's own outputs, never a command's input or a user's directory.

Real stages on a small synthetic dataset (synth -> etl -> tokenize -> labels), run through the CLI
in this process; every refusal is one line (exit 2) and leaves every file as it was.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import polars as pl
import pytest
from conftest import private_synth_pipeline

from ehrfm.app.cli import main
from ehrfm.errors import UserError
from ehrfm.io import OUTPUT_FILES, OUTPUT_MARKER, output_command


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
    assert output_command(out) == "labels"
    (out / "long_los.parquet").write_text("old")  # a file the labels wrote, changed since: replaced
    assert main(["labels", str(data["meds"]), "--task", "all", "--out", str(out), "--overwrite"]) == 0
    assert pl.read_parquet(out / "long_los.parquet").height > 0


def test_audit_out_is_refused_when_it_exists_unless_overwrite(data, tmp_path, capsys):
    """Before: `audit --out existing.json` replaced the file silently, unlike every other command."""
    out = tmp_path / "audit.json"
    out.write_text("mine\n")
    argv = ["audit", data["meds"], "--labels", data["labels"], "--out", out]
    refused(capsys, *argv, says=f"output {out} already exists; pass --overwrite to replace it")
    assert out.read_text() == "mine\n"
    capsys.readouterr()
    # --overwrite replaces only an earlier audit: not a file of the user's (before: "mine" was replaced)
    refused(capsys, *argv, "--overwrite", says=f"output {out} is a file ehrfm did not write")
    assert out.read_text() == "mine\n"
    out.unlink()
    assert main([str(a) for a in argv]) in (0, 1)  # 1: leakage found (the audit's verdict)
    first = out.read_text()
    assert json.loads(first)["ehrfm_output"] == "audit"
    assert main([str(a) for a in argv] + ["--overwrite"]) in (0, 1)
    assert set(json.loads(out.read_text())["tasks"]) == {"in_hospital_mortality", "long_los", "icu_admission",
                                                         "readmission_30d"}
    capsys.readouterr()


def test_overwrite_of_one_file_replaces_only_the_same_commands_file(data, tmp_path, capsys):
    """Before: a one-file output's --overwrite replaced any file: `ehrfm audit --out RUN/result.json
    --overwrite` replaced a training run's result (the heads then refused the run as damaged),
    `--out TOKENS/tokenizer.json` the tokenizer, `--out ~/notes.txt` a user's file. Now a file is
    replaced only when it carries the same command's mark (ehrfm.io.FILE_OUTPUT_KEY)."""
    import pyarrow.parquet as pq

    labels = tmp_path / "L.parquet"
    assert main(["labels", str(data["meds"]), "--task", "long_los", "--out", str(labels)]) == 0
    assert pq.read_schema(labels).metadata[b"ehrfm.output"] == b"labels"
    assert json.loads(labels.with_suffix(".json").read_text())["ehrfm_output"] == "labels"
    assert main(["labels", str(data["meds"]), "--task", "long_los", "--out", str(labels), "--overwrite"]) == 0
    sidecar = labels.with_suffix(".json")
    before = {p: p.read_bytes() for p in (labels, sidecar)}
    audit = ["audit", str(data["meds"]), "--labels", str(data["labels"]), "--overwrite", "--out"]
    refused(capsys, *audit, sidecar, says=f"output {sidecar} holds the output of `ehrfm labels`, not of `ehrfm audit`")
    notes, tokenizer, thesis = tmp_path / "notes.json", tmp_path / "tokenizer.json", tmp_path / "thesis.txt"
    notes.write_text('{"mine": 1}\n')
    tokenizer.write_text('{"vocab": []}\n')
    thesis.write_text("precious\n")
    mine = tmp_path / "mine.parquet"
    pl.DataFrame({"subject_id": [1], "prediction_time": [dt.datetime(2150, 1, 1)], "boolean_value": [True]}).write_parquet(mine)
    kept = {p: p.read_bytes() for p in (notes, tokenizer, thesis, mine)}
    for path in (notes, tokenizer, thesis):
        refused(capsys, *audit, path, says=f"output {path} is a file ehrfm did not write")
    refused(capsys, "labels", data["meds"], "--task", "long_los", "--overwrite", "--out", mine,
            says=f"output {mine} is a file ehrfm did not write")
    assert {p: p.read_bytes() for p in kept} == kept
    assert {p: p.read_bytes() for p in (labels, sidecar)} == before


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
    assert output_command(labels) == "labels"


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
    assert output_command(out) == "finetune_full"
    mark_output(out, "probe")
    with pytest.raises(UserError, match="holds the output of `ehrfm probe`, not of `ehrfm finetune_full`"), \
            atomic_dir(out, overwrite=True, command="finetune_full"):
        pass


def test_zoned_labels_beside_naive_data_are_refused_by_every_reader(data, tmp_path, capsys):
    """Before: ICU labels zoned America/New_York (the data's wall clock) beside MEDS times without a zone
    were read as UTC instants, 4-5 h later: the audit found the outcome in 25% of histories, yet probe,
    finetune, zeroshot and baseline scored them with one warning (probe AUROC 0.887 against 0.807).
    Now the token heads (the token dir records the MEDS zones), the baseline and the audit refuse them;
    UTC-zoned labels are the naive clock and pass."""
    from ehrfm.clinical.probe import load_label_histories
    from ehrfm.tokens import TokenDir

    td = TokenDir(data["tok"])
    assert td.meds_time_zones == []  # tokenize recorded the (naive) MEDS times
    labels = pl.read_parquet(data["labels"] / "icu_admission.parquet")
    zoned, utc = tmp_path / "icu_admission.parquet", tmp_path / "utc" / "icu_admission.parquet"
    labels.with_columns(pl.col("prediction_time").dt.replace_time_zone("America/New_York")).write_parquet(zoned)
    utc.parent.mkdir()
    labels.with_columns(pl.col("prediction_time").dt.replace_time_zone("UTC")).write_parquet(utc)
    says = f"label file {zoned}: column prediction_time has time zone America/New_York, and the times of"
    with pytest.raises(UserError, match=says.replace("(", r"\(").replace(")", r"\)")) as e:
        load_label_histories(td, zoned, None, 0)
    assert f"token dir {td.path} have none" in str(e.value) and "2150" not in str(e.value)
    refused(capsys, "audit", data["meds"], "--labels", zoned, says=says)
    refused(capsys, "baseline", data["meds"], "--labels", zoned, "--out", tmp_path / "b", "--bootstrap", 0, says=says)
    assert not (tmp_path / "b").exists()
    h = load_label_histories(td, utc, None, 0)  # UTC: the data's clock
    assert h.labels.height == labels.height


def test_naive_labels_beside_zoned_data_are_refused_unless_ehrfm_wrote_them(data, tmp_path, capsys):
    """A review helper: MEDS times zoned Asia/Tokyo (read as UTC instants) and labels on the same wall clock
    with the zone stripped: each label sat 9 h after its history, and probe scored AUROC 1.000 (0.710 on the
    naive data) without a word. Labels without a zone beside zoned data are now refused by every reader, unless
    `ehrfm labels` wrote them (its sidecar: UTC instants); the same labels given their zone are read."""
    import shutil

    from ehrfm.clinical.probe import load_label_histories
    from ehrfm.meds_io import open_meds
    from ehrfm.tokens import TokenDir

    meds, tok = tmp_path / "tokyo", tmp_path / "tok"
    shutil.copytree(data["meds"], meds)
    for shard in (meds / "data").rglob("*.parquet"):  # the same instants, written on the Tokyo clock
        t = pl.read_parquet(shard)
        t.with_columns(pl.col("time").dt.replace_time_zone("UTC").dt.convert_time_zone("Asia/Tokyo")).write_parquet(shard)
    open_meds(meds)  # its one zone warning, said once per process
    assert main(["tokenize", str(meds), "--out", str(tok), "--tokenizer", str(data["tok"] / "tokenizer.json")]) == 0
    td = TokenDir(tok)
    assert td.meds_time_zones == ["Asia/Tokyo"]
    assert main(["labels", str(meds), "--task", "icu_admission", "--out", str(tmp_path / "ours" / "icu_admission.parquet")]) == 0
    ours = pl.read_parquet(tmp_path / "ours" / "icu_admission.parquet")
    assert ours.equals(pl.read_parquet(data["labels"] / "icu_admission.parquet"))  # UTC instants, as on the naive data
    assert load_label_histories(td, tmp_path / "ours" / "icu_admission.parquet", None, 0).labels.height == ours.height
    wall = tmp_path / "wall" / "icu_admission.parquet"  # the Tokyo wall clock, its zone stripped
    wall.parent.mkdir()
    local = pl.col("prediction_time").dt.replace_time_zone("UTC").dt.convert_time_zone("Asia/Tokyo")
    ours.with_columns(local.dt.replace_time_zone(None)).write_parquet(wall)
    says = f"label file {wall}: column prediction_time has no time zone, and the times of"
    with pytest.raises(UserError, match=says) as e:
        load_label_histories(td, wall, None, 0)
    assert "are in Asia/Tokyo" in str(e.value) and "replace_time_zone('Asia/Tokyo')" in str(e.value)
    refused(capsys, "audit", meds, "--labels", wall, says=says)
    refused(capsys, "baseline", meds, "--labels", wall, "--out", tmp_path / "b", "--bootstrap", 0, says=says)
    assert not (tmp_path / "b").exists()
    zoned = tmp_path / "zoned" / "icu_admission.parquet"  # the same labels given their zone: the right instants
    zoned.parent.mkdir()
    pl.read_parquet(wall).with_columns(pl.col("prediction_time").dt.replace_time_zone("Asia/Tokyo")).write_parquet(zoned)
    got = load_label_histories(td, zoned, None, 0).labels
    assert got.select("subject_id", "prediction_time").equals(ours.select("subject_id", "prediction_time"))


def test_utc_by_any_name_is_the_naive_clock_and_empty_outs_and_stale_tasks_are_named(data, tmp_path, capsys):
    """A review helper: labels zoned Etc/UTC or GMT were refused as hours off the data (only "UTC" counted as UTC);
    `audit --out ''` wrote nothing silently and `labels --task all --out ''` named '.'; `audit --task` overrode
    the task a label file's sidecar records (ehrfm's long_los labels audited as mortality)."""
    from ehrfm.clinical.probe import load_label_histories
    from ehrfm.meds_io import is_utc
    from ehrfm.tokens import TokenDir

    labels = pl.read_parquet(data["labels"] / "long_los.parquet")
    for zone in ("Etc/UTC", "GMT", "UTC"):
        path = tmp_path / zone.replace("/", "_") / "long_los.parquet"
        path.parent.mkdir()
        labels.with_columns(pl.col("prediction_time").dt.replace_time_zone(zone)).write_parquet(path)
        assert load_label_histories(TokenDir(data["tok"]), path, None, 0).labels.height == labels.height
    assert is_utc("etc/utc") and not is_utc("Europe/London") and not is_utc(None)
    for argv in (["audit", data["meds"], "--labels", data["labels"], "--out", ""],
                 ["labels", data["meds"], "--task", "all", "--out", ""],
                 ["labels", data["meds"], "--task", "long_los", "--out", " "]):
        refused(capsys, *argv, says="the output path is empty (--out ''): give a path")
    refused(capsys, "audit", data["meds"], "--labels", data["labels"] / "long_los.parquet", "--task", "in_hospital_mortality",
            says="--task in_hospital_mortality, but the sidecar of label file")


def test_an_unfinished_output_is_refused_as_any_commands_input(data, tmp_path, capsys):
    """A killed `ehrfm etl` (kill -9) leaves MEDS.tmp-<pid>-<host>-<random> holding part of the dataset (no
    metadata/, a split missing): tokenize, labels and the audit read it, and the audit called 88 of 100 subjects
    "clean". Every reader now refuses an unfinished output, whichever stage left it."""
    import shutil

    from ehrfm.io import temporary_sibling

    says = "is the unfinished output of an ehrfm command"
    meds = temporary_sibling(tmp_path / "meds")
    shutil.copytree(data["meds"], meds)
    shutil.rmtree(meds / "metadata")  # as a kill during the ETL's last step leaves it
    labels, tok = temporary_sibling(tmp_path / "labels"), temporary_sibling(tmp_path / "tok")
    shutil.copytree(data["labels"], labels)
    shutil.copytree(data["tok"], tok)
    refused(capsys, "tokenize", meds, "--out", tmp_path / "t", says=says)
    refused(capsys, "labels", meds, "--task", "all", "--out", tmp_path / "l", says=says)
    refused(capsys, "audit", meds, "--labels", data["labels"], says=says)
    refused(capsys, "audit", data["meds"], "--labels", labels, says=says)
    refused(capsys, "baseline", data["meds"], "--labels", labels / "long_los.parquet", "--out", tmp_path / "b", says=says)
    refused(capsys, "sweep", "plan", "--tokens", tok, "--budgets", "1e11", "--out", tmp_path / "s", says=says)
    results = temporary_sibling(tmp_path / "results.parquet")
    results.write_text("run_id,n_params,tokens,flops,loss\n")
    refused(capsys, "fit", results, "--out", tmp_path / "f", says=says)
    assert not any((tmp_path / name).exists() for name in ("t", "l", "b", "s", "f"))


def test_an_output_made_by_another_process_meanwhile_is_not_replaced_without_overwrite(tmp_path):
    """Two `ehrfm etl --out X` at once: the later to finish swapped the other's output out, without --overwrite,
    and both said they wrote X. Now the second is refused when it would commit, and writes nothing."""
    from ehrfm.io import atomic_dir, stale_temporaries

    out = tmp_path / "out"
    with pytest.raises(UserError, match="appeared while this command ran"), atomic_dir(out, command="etl") as tmp:
        (tmp / "mine").write_text("1")
        with atomic_dir(out, command="etl") as other:  # the other process, finishing first
            (other / "theirs").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == sorted([OUTPUT_FILES, OUTPUT_MARKER, "theirs"])
    assert not stale_temporaries(out) and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # A symlinked output replaced with --overwrite: the link goes, its target stays; no leftover link beside it.
    target = tmp_path / "target"
    with atomic_dir(target, command="etl") as t:
        (t / "old").write_text("0")
    link = tmp_path / "link"
    link.symlink_to(target)
    with atomic_dir(link, overwrite=True, command="etl") as t:
        (t / "new").write_text("1")
    assert not link.is_symlink() and (link / "new").is_file() and (target / "old").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "out", "target"]


def test_one_rule_reads_a_temporary_name_for_every_reader():
    """Readers refusing unfinished outputs, the cleanup of dead processes' temporaries and `sweep status`'s
    foreign run dirs all read `temporary_sibling`'s name form through `temporary_parts`."""
    from ehrfm.io import _HOST_TAG, check_not_temporary, temporary_parts, temporary_sibling

    name = temporary_sibling(Path("/data/meds")).name
    assert temporary_parts(name) == ("meds", os.getpid(), _HOST_TAG)
    assert temporary_parts("checkpoint.tmp-4242-abcd1234") == ("checkpoint", 4242, None)  # the earlier form, no host
    for other in ("meds", "meds.tmp", "meds.tmp-notes", "meds.tmp-12-xyz", "meds.tmp-12-abcd1234-extra", "run.tmp-"):
        assert temporary_parts(other) is None, other
        check_not_temporary(Path("/data") / other / "data")
    with pytest.raises(UserError, match=r"unfinished output .*\(meds\)$"):
        check_not_temporary(Path("/data") / name / "data" / "0.parquet")
