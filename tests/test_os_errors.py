"""OS errors and signals around outputs (issue 15 fault 5, issue 11 fault 10).

A full disk (a small tmpfs filled up), a read-only filesystem (a read-only bind mount) and an
`--out` at or under a regular file give exit 2 and one line on stderr naming the path and the
errno's meaning, no traceback, and nothing half-written. SIGTERM during etl/tokenize removes
the output's temporary as Ctrl-C does; temporaries of dead processes go at the next run. The
mounts need root (CI runs as root); elsewhere those tests skip with the reason. Faults land at
named hold points (ehrfm.fault_points), never after a sleep.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import private_synth_pipeline
from test_train import make_token_dir

from ehrfm.fault_points import wait_held

ENV = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"}
TRAIN = ["--n-layer", "1", "--d-model", "32", "--n-head", "2", "--context", "64", "--tokens", "1000",
         "--batch-size", "4", "--eval-tokens", "512"]


def ehrfm(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ehrfm", *map(str, args)], env=env or ENV, capture_output=True, text=True)


def assert_one_line(p: subprocess.CompletedProcess, *parts: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr[-800:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def _mount(*args) -> str | None:
    """Run mount/umount; the reason it failed, or None."""
    try:
        p = subprocess.run(list(args), capture_output=True, text=True)
    except FileNotFoundError:
        return f"{args[0]} not found"
    return None if p.returncode == 0 else (p.stderr.strip() or f"{args[0]} exited {p.returncode}")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Real inputs of every stage, on a normal filesystem (a private copy: the tests fill and break disks)."""
    from analysis.synthetic import synthetic_results

    base = private_synth_pipeline(tmp_path_factory.mktemp("inputs"), n_patients=150, seed=1)["base"]
    synthetic_results(budgets=(1e18, 1e19, 1e20), sizes=5, seed=1).write_csv(base / "results.csv")
    return {"raw": base / "raw", "meds": base / "meds", "tok": make_token_dir(base / "small_tok"),
            "meds_tok": base / "tok", "results": base / "results.csv", "regular": _touch(base / "a_file")}


def _touch(p: Path) -> Path:
    p.write_text("not a directory\n")
    return p


@pytest.fixture()
def full_disk(tmp_path):
    """A 256 KiB tmpfs, filled to the last byte."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    why = _mount("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt))
    if why:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {why}")
    try:
        _fill(mnt)
        yield mnt
    finally:
        if _mount("umount", str(mnt)):
            _mount("umount", "-l", str(mnt))


def _fill(mnt: Path) -> None:
    """Fill the filesystem at `mnt` to its last byte (a file of zeros)."""
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.fixture()
def read_only(tmp_path):
    """A read-only bind mount of an empty directory."""
    src, mnt = tmp_path / "rw", tmp_path / "ro"
    src.mkdir()
    mnt.mkdir()
    why = _mount("mount", "--bind", str(src), str(mnt))
    if why:
        pytest.skip(f"cannot bind-mount here (needs root): {why}")
    try:
        why = _mount("mount", "-o", "remount,ro,bind", str(mnt))
        if why:
            pytest.skip(f"cannot remount read-only here: {why}")
        yield mnt
    finally:
        if _mount("umount", str(mnt)):
            _mount("umount", "-l", str(mnt))


def commands(inputs: dict[str, Path], out: Path) -> dict[str, list]:
    """Every writing command, with its output at `out`."""
    return {
        "synth": ["synth", "--out", out, "--patients", "20"],
        "etl": ["etl", inputs["raw"], "--out", out],
        "tokenize": ["tokenize", inputs["meds"], "--out", out],
        "train": ["train", inputs["tok"], "--out", out, *TRAIN],
        "sweep plan": ["sweep", "plan", "--tokens", inputs["tok"], "--budgets", "2e8", "--sizes", "2", "--context", "64",
                       "--out", out],
        "fit": ["fit", inputs["results"], "--out", out, "--approach", "1", "--bootstrap", "0", "--no-plots"],
        "labels": ["labels", inputs["meds"], "--task", "in_hospital_mortality", "--out", Path(str(out) + ".parquet")],
    }


@pytest.mark.parametrize("cmd", ["etl", "tokenize", "fit", "train"])
def test_full_disk_is_one_line_and_leaves_nothing(inputs, full_disk, cmd):
    out = full_disk / "out"
    line = assert_one_line(ehrfm(*commands(inputs, out)[cmd]), str(out), "No space left on device")
    assert line.startswith(f"ehrfm {cmd}: error:")
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]  # nothing half-written


@pytest.mark.parametrize("cmd", ["synth", "etl", "tokenize", "train", "sweep plan", "fit", "labels"])
def test_read_only_filesystem_is_one_line(inputs, read_only, cmd):
    args = commands(inputs, read_only / "out")[cmd]
    assert_one_line(ehrfm(*args), str(read_only / "out"), "Read-only file system")
    assert not list(read_only.iterdir())


def test_sweep_collect_into_a_read_only_sweep_dir(inputs, tmp_path):
    sweep = tmp_path / "rw" / "sweep"
    assert ehrfm(*commands(inputs, sweep)["sweep plan"]).returncode == 0
    mnt = tmp_path / "ro"
    mnt.mkdir()
    why = _mount("mount", "--bind", str(tmp_path / "rw"), str(mnt)) or _mount("mount", "-o", "remount,ro,bind", str(mnt))
    if why:
        _mount("umount", str(mnt))
        pytest.skip(f"cannot make a read-only bind mount here (needs root): {why}")
    try:
        assert_one_line(ehrfm("sweep", "collect", mnt / "sweep"), str(mnt / "sweep" / "results.parquet"), "Read-only file system")
    finally:
        _mount("umount", str(mnt))


@pytest.mark.parametrize("cmd", ["synth", "etl", "tokenize", "train", "sweep plan", "fit", "labels"])
def test_out_under_a_regular_file_is_one_line(inputs, cmd):
    out = inputs["regular"] / "sub"
    line = assert_one_line(ehrfm(*commands(inputs, out)[cmd]), str(inputs["regular"]))
    assert "Not a directory" in line or "regular file" in line
    assert inputs["regular"].read_text() == "not a directory\n"


@pytest.mark.parametrize("cmd", ["train", "sweep plan", "etl", "fit"])
def test_out_at_a_regular_file_is_one_line(inputs, cmd):
    line = assert_one_line(ehrfm(*commands(inputs, inputs["regular"])[cmd]), str(inputs["regular"]))
    assert any(says in line for says in ("Not a directory", "regular file", "already exists", "is not a directory"))
    assert inputs["regular"].read_text() == "not a directory\n"


# --- SIGTERM / kill -9 during etl and tokenize (issue 11, fault 10) ----------------------------


def held_in_atomic_dir(inputs, tmp_path, cmd: str, output=subprocess.PIPE) -> tuple[Path, subprocess.Popen, dict]:
    """(out, process, hold record) of `ehrfm CMD ... --out tmp_path/out` held while it writes its temporary."""
    out, holds = tmp_path / "out", tmp_path / "holds"
    env = dict(ENV, EHRFM_HOLD_AT="atomic-dir", EHRFM_HOLD_DIR=str(holds))
    # SIGHUP as a terminal leaves it, even where the suite runs under nohup (which ignores it, and ehrfm then does too)
    proc = subprocess.Popen([sys.executable, "-m", "ehrfm", *map(str, commands(inputs, out)[cmd])], env=env,
                            stdout=output, stderr=output, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    return out, proc, wait_held(holds, out.name, "atomic-dir", is_alive=lambda: proc.poll() is None)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("cmd", ["etl", "tokenize"])
def test_sigterm_removes_the_temporary(inputs, tmp_path, cmd, sig):
    """SIGTERM (SLURM, `timeout`) and SIGHUP (a closed terminal, a dropped ssh session) clean up like
    Ctrl-C; SIGHUP used to kill the process with its temporary left behind."""
    out, proc, held = held_in_atomic_dir(inputs, tmp_path, cmd)
    assert list(tmp_path.glob(f"out.tmp-{held['pid']}-*"))  # the whole output sits in its temporary
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert err.strip() == f"ehrfm {cmd}: terminated ({sig.name})"
    assert not out.exists() and not list(tmp_path.glob("out.tmp-*"))


@pytest.mark.parametrize("cmd", ["etl", "tokenize"])
def test_temporaries_of_dead_processes_are_removed_by_the_next_run(inputs, tmp_path, cmd):
    out, proc, _ = held_in_atomic_dir(inputs, tmp_path, cmd, output=subprocess.DEVNULL)
    proc.kill()  # kill -9: no cleanup possible
    proc.wait()
    leaked = list(tmp_path.glob("out.tmp-*"))
    assert len(leaked) == 1
    (tmp_path / f"out.tmp-{proc.pid}-0badf00d").write_text("a file temporary, old naming")
    live = tmp_path / f"out.tmp-{os.getpid()}-0badf00d"  # a live process's: left alone
    live.mkdir()
    done = ehrfm(*commands(inputs, out)[cmd])
    assert done.returncode == 0, done.stderr[-500:]
    assert sorted(tmp_path.glob("out.tmp-*")) == [live]
    stats = out / ("stats.json" if cmd == "tokenize" else "metadata/dataset.json")
    assert json.loads(stats.read_text())


def test_a_disk_filled_mid_run_names_the_failure_not_only_its_record(inputs, tmp_path):
    """Before: a run dir whose disk filled mid-run failed its next write (a checkpoint, a metrics line),
    and then the write of the failure record; only the second was said ("result.json: No space left"),
    so what had failed was never named. Now one line names both, and the checkpoint written before the
    fault is kept to resume the run once there is room."""
    mnt, holds = tmp_path / "small", tmp_path / "holds"
    mnt.mkdir()
    holds.mkdir()
    why = _mount("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt))
    if why:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {why}")
    try:
        run = mnt / "run"
        env = dict(ENV, EHRFM_HOLD_AT="step-3", EHRFM_HOLD_DIR=str(holds))
        proc = subprocess.Popen([sys.executable, "-m", "ehrfm", "train", str(inputs["tok"]), "--out", str(run), *TRAIN,
                                 "--checkpoint-interval", "2", "--log-interval", "1"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        wait_held(holds, "run", "step-3", is_alive=lambda: proc.poll() is None)
        assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 2
        _fill(mnt)
        (holds / "run.step-3.release").touch()
        _, err = proc.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert f"run {run} failed (" in lines[0] and "the failure could not be recorded in its result.json" in lines[0]
        assert lines[0].count("ENOSPC") + lines[0].count("No space left") >= 2, lines[0]
        assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 2  # kept to resume from
    finally:
        if _mount("umount", str(mnt)):
            _mount("umount", "-l", str(mnt))
