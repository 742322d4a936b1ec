"""Interruptions of the data and clinical stages (Ctrl-C, SIGTERM, kill -9), one test per kind of fault.

Each interruption lands at a named hold point (ehrfm.fault_points) or at an exact call
(monkeypatched), never after a sleep. After it: nothing in --out looks complete but is not, a
rerun into the same --out works, and its output equals an uninterrupted run's, byte for byte.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ehrfm.fault_points import release, wait_held
from ehrfm.io import pid_alive

ENV = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"}


def files(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes), the run-dependent ones left out."""
    skip = {"etl_config.json", "dataset.json"}  # hold the output path and the seconds taken
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic raw dir and its MEDS made by an uninterrupted run (the reference)."""
    from tokenization.etl import etl
    from tokenization.synth import synthesize

    base = tmp_path_factory.mktemp("interrupt")
    synthesize(base / "raw", n_patients=120, seed=3)
    etl(base / "raw", base / "meds", workers=1)
    return {"raw": base / "raw", "meds": base / "meds"}


@pytest.fixture()
def start_etl():
    """start(raw, out, hold_at, holds): `ehrfm etl RAW --out OUT --workers 2` held at `hold_at`.

    Each in its own process group (as a terminal's job is), killed whole when the test ends, so a
    failing test leaves no worker behind.
    """
    started = []

    def start(raw: Path, out: Path, hold_at: str, holds: Path, output=subprocess.PIPE, sigint_ignored=False) -> subprocess.Popen:
        env = dict(ENV, EHRFM_HOLD_AT=hold_at, EHRFM_HOLD_DIR=str(holds))
        # sigint_ignored: as a script's background job (`ehrfm etl ... &`) starts, SIGINT ignored; exec keeps that
        shell = ["bash", "-c", 'trap "" INT; exec "$@"', "bash"] if sigint_ignored else []
        started.append(subprocess.Popen(
            [*shell, sys.executable, "-m", "ehrfm", "etl", str(raw), "--out", str(out), "--workers", "2"],
            env=env, stdout=output, stderr=output, text=True, start_new_session=True))
        return started[-1]

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def assert_rerun_equals_reference(raw: dict[str, Path], out: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "ehrfm", "etl", str(raw["raw"]), "--out", str(out), "--workers", "2"],
                          env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-800:]
    assert files(out) == files(raw["meds"])
    assert not list(out.parent.glob(f"{out.name}.tmp-*"))


def test_ctrl_c_with_etl_workers_is_one_line(raw, tmp_path, start_etl):
    """Before: Ctrl-C (SIGINT to the terminal's whole process group) during `ehrfm etl --workers 2`
    printed a KeyboardInterrupt traceback from every idle worker (45 lines) above "interrupted".
    Now the workers never take SIGINT (it is blocked while they are spawned): the main process
    stops them and says so in one line."""
    out, holds = tmp_path / "meds", tmp_path / "holds"
    proc = start_etl(raw["raw"], out, "etl-staged", holds)
    wait_held(holds, out.name, "etl-staged", is_alive=lambda: proc.poll() is None)  # workers idle, tables staged
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-800:]
    assert err.strip() == "ehrfm etl: interrupted"
    assert not out.exists() and not list(tmp_path.glob("meds.tmp-*"))
    assert_rerun_equals_reference(raw, out)


def sigint_ignored(pid: int) -> bool:
    """Whether the kernel ignores SIGINT for process `pid` (what the processes it execs inherit)."""
    ignored = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigIgn:"))
    return bool(int(ignored.split()[1], 16) >> (signal.SIGINT - 1) & 1)


def test_a_background_etl_leaves_ctrl_c_ignored_as_its_shell_did(raw, tmp_path, start_etl):
    """Before: `ehrfm etl ... &` in a script (SIGINT ignored, as a shell without job control starts a
    background job) caught SIGINT once polars was imported: polars installs its own hook over the
    ignore (pola-rs/polars#20961), so each process it then exec'd took Ctrl-C's default action, and
    a polars query under way raised KeyboardInterrupt. Now the ignore is the kernel's again: a Ctrl-C
    to the terminal's group leaves the run going, and its output is the reference."""
    out, holds = tmp_path / "meds", tmp_path / "holds"
    proc = start_etl(raw["raw"], out, "etl-staged", holds, sigint_ignored=True)
    wait_held(holds, out.name, "etl-staged", is_alive=lambda: proc.poll() is None)
    assert sigint_ignored(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    release(holds, out.name, "etl-staged")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-800:]
    assert files(out) == files(raw["meds"])


def test_sigterm_to_the_main_process_stops_a_busy_worker(raw, tmp_path, start_etl):
    """Before: `kill PID` (SIGTERM to the main process only, as a user or some schedulers send it)
    while a worker staged a table waited for that table to finish (minutes on MIMIC-IV's labevents;
    here, a worker held at the point, forever). Now the workers are stopped at once: exit 143, one line."""
    out, holds = tmp_path / "meds", tmp_path / "holds"
    proc = start_etl(raw["raw"], out, "etl-table", holds)
    wait_held(holds, "hosp__labevents", "etl-table", is_alive=lambda: proc.poll() is None)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)  # generous: the stop takes well under a second
    assert proc.returncode == 128 + signal.SIGTERM, err[-800:]
    assert err.strip() == "ehrfm etl: terminated (SIGTERM)"
    assert not out.exists() and not list(tmp_path.glob("meds.tmp-*"))
    assert_rerun_equals_reference(raw, out)


def test_workers_of_a_killed_etl_end_with_it(raw, tmp_path, start_etl):
    """Before: kill -9 of `ehrfm etl` (the OOM killer) left its worker processes alive for good, each
    holding its memory, blocked on a queue no one writes. Now a worker ends when its parent does;
    the rerun removes the dead run's temporary and writes the reference output."""
    out, holds = tmp_path / "meds", tmp_path / "holds"
    proc = start_etl(raw["raw"], out, "etl-table", holds, output=subprocess.DEVNULL)
    worker = wait_held(holds, "hosp__labevents", "etl-table", is_alive=lambda: proc.poll() is None)["pid"]
    assert worker != proc.pid
    proc.kill()
    proc.wait()
    release(holds, "hosp__labevents", "etl-table")  # the worker may go on: it must end by itself, not hang
    deadline = time.monotonic() + 60  # a generous bound on a wait for an event: the worker ends at once
    while pid_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(worker), "the worker outlived its killed parent"
    assert len(list(tmp_path.glob("meds.tmp-*"))) == 1 and not out.exists()  # the dead run's temporary only
    assert_rerun_equals_reference(raw, out)


# --- labels: a parquet and its sidecar JSON -----------------------------------------------------


@pytest.fixture(scope="module")
def labels_ref(raw, tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """Uninterrupted single-task label files: task -> {"parquet": bytes, "json": bytes}."""
    from ehrfm.app.cli import main

    base = tmp_path_factory.mktemp("labels_ref")
    ref = {}
    for task in ("long_los", "in_hospital_mortality"):
        assert main(["labels", str(raw["meds"]), "--task", task, "--out", str(base / f"{task}.parquet")]) == 0
        ref[task] = {"parquet": (base / f"{task}.parquet").read_bytes(), "json": (base / f"{task}.json").read_bytes()}
    return ref


def _interrupt_at_sidecar(monkeypatch):
    """Ctrl-C while the sidecar JSON is written (its temporary, or the old code's file itself)."""
    import ehrfm.io

    real = ehrfm.io.write_json

    def write_json(path, obj, indent=2):
        if Path(path).name.startswith("L.json"):
            raise KeyboardInterrupt
        return real(path, obj, indent)

    monkeypatch.setattr(ehrfm.io, "write_json", write_json)


def _sigterm_at_first_rename(monkeypatch):
    """SIGTERM (a scheduler's time limit) arriving as the first output is renamed into place."""
    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if Path(dst).name.startswith("L."):
            monkeypatch.setattr(os, "replace", real)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("interrupt", [_interrupt_at_sidecar, _sigterm_at_first_rename])
def test_labels_interrupted_never_sit_beside_another_runs_sidecar(raw, labels_ref, tmp_path, monkeypatch, capsys, interrupt):
    """Before: `ehrfm labels --task in_hospital_mortality --out L.parquet --overwrite` over long-stay
    labels, interrupted after L.parquet was replaced, left the old L.json: the mortality labels were
    then read as task long_los (and its windows) by the heads, the audit and zeroshot, silently.
    Now the two files are replaced together: the old pair or the new pair, never a mix."""
    from ehrfm.app.cli import main
    from ehrfm.clinical.labels import task_name

    out = tmp_path / "L.parquet"
    args = ["labels", str(raw["meds"]), "--task", "in_hospital_mortality", "--out", str(out), "--overwrite"]
    assert main(["labels", str(raw["meds"]), "--task", "long_los", "--out", str(out)]) == 0
    interrupt(monkeypatch)
    assert main(args) in (130, 143)
    monkeypatch.undo()
    task = task_name(out)
    assert task in labels_ref
    assert out.read_bytes() == labels_ref[task]["parquet"]  # the parquet is the one its sidecar names
    assert out.with_suffix(".json").read_bytes() == labels_ref[task]["json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["L.json", "L.parquet"]  # no temporaries left
    assert main(args) == 0  # the rerun
    assert out.read_bytes() == labels_ref["in_hospital_mortality"]["parquet"]
    assert out.with_suffix(".json").read_bytes() == labels_ref["in_hospital_mortality"]["json"]
    capsys.readouterr()


# --- tokenize: the tokenizer fit's temporary files --------------------------------------------


def test_a_full_tmpdir_while_fitting_the_tokenizer_is_one_line(raw, tmp_path, monkeypatch, capsys):
    """Before: a full TMPDIR (a cluster node's small /tmp) while the decile fit spilled its values
    ended in polars' ComputeError traceback ("... No space left on device (os error 28)"), naming
    no path. Now: exit 2, one line naming the directory, the errno's meaning and TMPDIR; nothing
    written; the rerun gives the token dir of an uninterrupted run."""
    import errno

    import pyarrow.parquet as pq

    import tokenization.tokenize as tokenize_module
    from ehrfm.app.cli import main

    monkeypatch.setattr(tokenize_module, "FIT_BATCH_VALUES", 2000)  # several batches: the fit spills to TMPDIR
    real = pq.ParquetWriter.write_table
    writes = []

    def write_table(self, table, *args, **kwargs):
        # The spill's writers (since 2026-12-03 pyarrow's, a slice of a shard at a time; polars'
        # write_parquet before): the third write finds the disk full, as pyarrow reports it.
        writes.append(1)
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)
    out = tmp_path / "tok"
    assert main(["tokenize", str(raw["meds"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ehrfm tokenize: error: cannot write the tokenizer fit's temporary files")
    assert "No space left on device" in err[0] and "TMPDIR" in err[0]
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(pq.ParquetWriter, "write_table", real)
    assert main(["tokenize", str(raw["meds"]), "--out", str(out)]) == 0
    monkeypatch.undo()
    assert main(["tokenize", str(raw["meds"]), "--out", str(tmp_path / "reference")]) == 0
    run_dependent = {"stats.json", "config.json"}
    assert {k: v for k, v in files(out).items() if Path(k).name not in run_dependent} == \
           {k: v for k, v in files(tmp_path / "reference").items() if Path(k).name not in run_dependent}


# --- --overwrite: the swap of the old output for the new one ------------------------------------


def test_sigterm_inside_the_overwrite_swap_leaves_a_whole_output(tmp_path, monkeypatch, capsys):
    """Before: SIGTERM or Ctrl-C landing between atomic_dir's two renames (the old output moved aside,
    the new one not yet in) of `ehrfm synth --out OUT --overwrite` left no OUT at all, the old and
    the new output both sitting in temporaries. Now the two renames go together: OUT is the new
    output, whole, and the command still reports the signal (exit 143)."""
    from ehrfm.app.cli import main

    out = tmp_path / "raw"
    assert main(["synth", "--out", str(out), "--patients", "20", "--seed", "1"]) == 0
    assert main(["synth", "--out", str(tmp_path / "reference"), "--patients", "30", "--seed", "2"]) == 0
    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if Path(src) == out:  # the old output just moved aside
            monkeypatch.setattr(os, "replace", real)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, "replace", replace)
    assert main(["synth", "--out", str(out), "--patients", "30", "--seed", "2", "--overwrite"]) == 128 + signal.SIGTERM
    monkeypatch.undo()
    assert capsys.readouterr().err.strip().endswith("ehrfm synth: terminated (SIGTERM)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "reference"]  # no temporaries left
    assert files(out) == files(tmp_path / "reference")


def test_the_spill_of_a_killed_tokenizer_fit_is_removed_by_the_next(raw, tmp_path, monkeypatch):
    """Before: the decile fit's spill directory in TMPDIR (`ehrfm-fit-*`, gigabytes on a large
    dataset) of a tokenize killed by kill -9 or the OOM killer stayed in /tmp for good. Now it is
    named as ehrfm's temporaries are and the next fit on the machine removes it; a live
    process's is left alone."""
    import tempfile

    import ehrfm.io
    from tokenization.tokenize import fit_tokenizer

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = ehrfm.io._HOST_TAG
    killed = tmp_path / f"ehrfm-fit.tmp-{int(dead.stdout)}-{host}-0badf00d"
    live = tmp_path / f"ehrfm-fit.tmp-{os.getppid()}-{host}-0badf00d"  # the test runner's parent: alive
    for d in (killed, live):
        d.mkdir()
        (d / "0_0.parquet").write_bytes(b"spilled values")
    reference = fit_tokenizer(raw["meds"])  # one batch: no spill
    assert fit_tokenizer(raw["meds"], batch_values=2000) == reference  # spills, and cleans up first
    assert sorted(tmp_path.iterdir()) == [live]


def test_a_failed_second_rename_of_an_overwrite_puts_the_old_output_back(tmp_path, monkeypatch):
    """`--overwrite` swaps by two renames (out -> old, new -> out). When the second failed (EIO on a
    network filesystem), `out` was gone and the old output sat in a temporary that the next run deletes."""
    import errno

    import ehrfm.io as io

    out = tmp_path / "out"
    with io.atomic_dir(out) as t:
        (t / "f").write_text("old")
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(OSError), io.atomic_dir(out, overwrite=True) as t:
        (t / "f").write_text("new")
    monkeypatch.setattr(io.os, "replace", real)
    assert (out / "f").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("when", ["entering", "leaving"])
def test_a_signal_while_handlers_are_swapped_leaves_every_handler_restored(monkeypatch, when):
    """signals_deferred swaps SIGINT's and SIGTERM's handlers for a recorder and back. A SIGTERM
    between the two installs, or a Ctrl-C between the two restores, escaped with the other signal
    left on the recorder for good: every later Ctrl-C (or SIGTERM) was silently swallowed."""
    import ehrfm.io as io

    class TerminatedError(Exception):
        pass

    def on_term(signum, frame):
        raise TerminatedError

    pytests = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    real, armed = signal.signal, []

    def swap(signum, handler):  # the real swap, with a signal landing right after the chosen one
        previous = real(signum, handler)
        if armed and signum == armed[0][0] and (handler is armed[0][1] or armed[0][1] is None):
            _, _, kill = armed.pop()
            os.kill(os.getpid(), kill)
        return previous

    try:
        real(signal.SIGTERM, on_term)
        real(signal.SIGINT, signal.default_int_handler)
        monkeypatch.setattr(io.signal, "signal", swap)
        if when == "entering":  # SIGTERM lands just after SIGINT's recorder went in
            armed.append((signal.SIGINT, None, signal.SIGTERM))
            with pytest.raises(TerminatedError), io.signals_deferred():
                pass
        else:
            with pytest.raises(KeyboardInterrupt), io.signals_deferred():  # Ctrl-C lands once SIGINT's handler is back
                armed.append((signal.SIGINT, signal.default_int_handler, signal.SIGINT))
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is on_term
    finally:
        monkeypatch.undo()
        for signum, handler in pytests.items():
            real(signum, handler)
