"""A filesystem that refuses file locks (NFS mounted `nolock`: ENOLCK; Lustre without `-o flock`:
ENOSYS) is named in one line, never met with "No locks available" and no path.

flock's OSError carries no file name, so `ehrfm sweep launch` on such a mount printed
"ehrfm sweep: error: No locks available (ENOLCK)": the user could not tell which of their dirs
(sweep, run, token dir) sat on the lockless filesystem. No filesystem here lacks locks, so flock
itself is made to fail as one does (the errno the kernel returns), and the real commands run.
"""

from __future__ import annotations

import errno
import fcntl

import pytest

from ehrfm.errors import UserError


@pytest.fixture(params=[errno.ENOLCK, errno.ENOSYS], ids=["ENOLCK", "ENOSYS"])
def lockless(request, monkeypatch):
    """Every flock that takes a lock fails with the errno of a lockless mount; unlocking succeeds."""
    real = fcntl.flock

    def refuse(f, op):
        if op & (fcntl.LOCK_EX | fcntl.LOCK_SH):
            raise OSError(request.param, "No locks available" if request.param == errno.ENOLCK else "Function not implemented")
        return real(f, op)

    monkeypatch.setattr(fcntl, "flock", refuse)
    return errno.errorcode[request.param]


def test_sweep_launch_names_the_lock_file_and_trains_nothing(lockless, tok, tmp_path, capsys):
    from ehrfm.app.cli import main
    from sweeps.plan import plan_sweep

    sweep_dir = tmp_path / "sweep"
    _, rows, _ = plan_sweep(tok, [2e8], sweep_dir, sizes=2, context=64, min_steps=1, train={"batch_size": 4})
    rc = main(["sweep", "launch", str(sweep_dir), "--executor", "local"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"ehrfm sweep launch: error: {sweep_dir / '.launch.lock'}: its filesystem refuses file locks ({lockless}")
    assert not any((sweep_dir / "runs" / r["run_id"] / "result.json").exists() for r in rows)


def test_each_lock_names_its_own_file(lockless, tmp_path):
    from ehrfm.run_lock import lock_demo_dir, lock_run_dir, run_dir_busy
    from sweeps.state import launch_in_progress, record_lock

    run = tmp_path / "run"
    run.mkdir()
    (run / ".train.lock").touch()
    (tmp_path / ".launch.lock").touch()
    for call, path in [(lambda: lock_run_dir(run), run / ".train.lock"),
                       (lambda: run_dir_busy(run), run / ".train.lock"),
                       (lambda: lock_demo_dir(tmp_path), tmp_path / ".demo.lock"),
                       (lambda: launch_in_progress(tmp_path), tmp_path / ".launch.lock"),
                       (lambda: record_lock(tmp_path / "jobs" / "r1.json").__enter__(), tmp_path / "jobs" / "r1.lock")]:
        with pytest.raises(UserError) as e:
            call()
        assert str(e.value).startswith(f"{path}: its filesystem refuses file locks ({lockless}: "), str(e.value)


def test_a_held_lock_is_still_told_apart_from_a_lockless_filesystem(tmp_path, monkeypatch):
    """BlockingIOError (another holder) passes through flock's wrapper: the run dir is busy, not lockless."""
    import ehrfm.run_lock as rl
    from ehrfm.run_lock import RunDirBusyError, lock_run_dir, run_dir_busy

    monkeypatch.setattr(rl, "_PROBE_GRACE_S", 0.0)  # refused at once, not after the launcher-probe grace
    tmp_path.joinpath("run").mkdir()
    held = lock_run_dir(tmp_path / "run")
    try:
        assert run_dir_busy(tmp_path / "run")
        with pytest.raises(RunDirBusyError):
            lock_run_dir(tmp_path / "run")
    finally:
        held.close()
    assert not run_dir_busy(tmp_path / "run")
