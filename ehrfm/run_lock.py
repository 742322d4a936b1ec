"""One trainer per run dir: an exclusive lock on RUN/.train.lock while training.

The trainer takes `fcntl.flock(LOCK_EX)` on the lock file for as long as it trains and writes
the run dir; the OS releases it when the process exits or is killed (kill -9 included), so a
crashed trainer never leaves a stale lock. A second trainer on the same run dir (a teammate's
relaunch, a duplicate SLURM job, two shells) is refused at once with `RunDirBusyError`, before it
touches anything. Launchers ask `run_dir_busy` to see a trainer that the scheduler does not show
them (another machine, another user's private jobs). flock is POSIX-emulated on NFSv4 clients, so
the lock also holds across the nodes of a cluster sharing the sweep dir.

Light on purpose (no torch): `sweep status` imports it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from ehrfm.errors import UserError

LOCK_FILE = ".train.lock"
DEMO_LOCK_FILE = ".demo.lock"
# A launcher's probe holds the lock for microseconds; a trainer that meets one retries this long
# before it concludes that another trainer holds the run dir.
_PROBE_GRACE_S = 5.0  # generous: a probe descheduled on a loaded machine must not look like a trainer


# A filesystem without working locks answers flock so: ENOLCK (NFS mounted `nolock`, no lockd),
# ENOSYS or EOPNOTSUPP (Lustre mounted without `-o flock`/`localflock`, some FUSE filesystems).
NO_LOCK_ERRNOS = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP})


def flock(f, flags: int, path: str | os.PathLike) -> None:
    """fcntl.flock(f, flags), in one line naming `path` when the filesystem refuses locks.

    fcntl's OSError carries no file name, so "No locks available" could not say which directory
    sits on the lockless filesystem. BlockingIOError (LOCK_NB, another holder) passes through.

    Raises:
        UserError: flock failed with an errno of NO_LOCK_ERRNOS (names `path` and the errno).
        OSError: any other flock error, as is.
    """
    try:
        fcntl.flock(f, flags)
    except BlockingIOError:
        raise
    except OSError as e:
        if e.errno not in NO_LOCK_ERRNOS:
            raise
        raise UserError(f"{os.fspath(path)}: its filesystem refuses file locks ({errno.errorcode.get(e.errno, e.errno)}: "
                        f"{os.strerror(e.errno)}; NFS mounted nolock, or Lustre without -o flock), and ehrfm needs them to "
                        "keep two processes off one run or sweep: put the dir on a filesystem with locks (or ask your "
                        "admins to enable them)") from None


class RunDirBusyError(UserError):
    """Another process is training this run dir (it holds RUN/.train.lock)."""


class RunDirGoneError(UserError):
    """The run dir was deleted, moved or replaced while this process trained it (check_run_dir_intact)."""


# (device, inode) of each run dir's lock file this process locked, by the run dir's absolute path
_LOCKED: dict[str, tuple[int, int]] = {}


def check_run_dir_intact(run_dir: str | os.PathLike) -> None:
    """Refuse to write into a run dir deleted, moved or replaced since this process locked it.

    `rm -rf RUN` (a user resetting a run, a scratch purge) while its trainer ran: the trainer recreated
    RUN with a checkpoint and result.json only (no config.json, no metrics), unlocked (its lock file was
    gone), so a second trainer could start on it beside the first. The lock file still being the one
    this process locked says the run dir is the same. A run dir this process did not lock is not checked.

    Raises:
        RunDirGoneError: RUN/.train.lock is gone or another file (a UserError; one line naming the run dir).
    """
    mine = _LOCKED.get(os.path.abspath(run_dir))
    if mine is None:
        return
    try:
        st = os.stat(Path(run_dir) / LOCK_FILE)
        now = (st.st_dev, st.st_ino)
    except OSError:
        now = None
    if now != mine:
        raise RunDirGoneError(f"run dir {run_dir} was deleted, moved or replaced while this trainer ran ({LOCK_FILE} is "
                        f"{'gone' if now is None else 'another file'}): stopped without writing into it; rerun to train it again")


def lock_run_dir(run_dir: str | os.PathLike):
    """Take RUN's exclusive training lock; returns the open lock file (closing it releases it).

    Args:
        run_dir: an existing run dir.

    Raises:
        RunDirBusyError: another process holds the lock (one line naming the run dir).
    """
    path = Path(run_dir) / LOCK_FILE
    f = open(path, "a", encoding="utf-8")  # noqa: SIM115 (the caller holds it open for the whole run)
    deadline = time.monotonic() + _PROBE_GRACE_S
    while True:
        try:
            flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB, path)
            st = os.fstat(f.fileno())
            _LOCKED[os.path.abspath(run_dir)] = (st.st_dev, st.st_ino)  # check_run_dir_intact compares with it
            return f
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.close()
                raise RunDirBusyError(
                    f"run dir {run_dir} is being trained by another process (it holds {path}); "
                    "wait for it to finish (then rerun to resume or reuse it) or choose another --out"
                ) from None
            time.sleep(0.02)
        except BaseException:
            f.close()
            raise


def run_dir_busy(run_dir: str | os.PathLike) -> bool:
    """True when a trainer holds RUN's training lock now (False when there is no lock file)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115
    except OSError:
        return False
    with f:
        try:
            flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB, path)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def lock_demo_dir(out: str | os.PathLike):
    """Take OUT's exclusive `ehrfm demo` lock; returns the open lock file (closing it releases it).

    A demo runs its stages one after another into one dir and records its planning decisions
    (progress.json) as it goes: two demos into the same --out (a second shell, a rerun while the
    first still trains) would interleave those, so the second is refused at once.

    Args:
        out: an existing demo output dir.

    Raises:
        UserError: another process holds the lock (one line naming the dir).
    """
    path = Path(out) / DEMO_LOCK_FILE
    f = open(path, "a", encoding="utf-8")  # noqa: SIM115 (the caller holds it open for the whole demo)
    try:
        flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB, path)
    except BlockingIOError:
        f.close()
        raise UserError(f"--out {out}: another `ehrfm demo` is running into it (it holds {path}); wait for it to finish "
                        "(a rerun then resumes its study) or choose another --out") from None
    except BaseException:
        f.close()
        raise
    return f
