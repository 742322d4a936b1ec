"""Shared file helpers: atomic outputs, JSON with dataclasses, progress bars.

Every stage writes through these so that an interrupted run never leaves a half-written output:
directories are built under `<out>.tmp-<pid>-<host>-<random>` and renamed into place; single files are
written to a temporary sibling and `os.replace`d.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ehrfm import fault_points
from ehrfm.errors import UserError

# Temporaries are named `<out>.tmp-<pid>-<host>-<random>`: the pid and host let a later run tell
# the leftovers of a dead process (kill -9, power loss) from the work of a live one.
_HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


# The longest line a warning or error prints: a 200,000-character code of another tool's MEDS data made one warning
# line of 200,177 characters.
LINE_MAX_CHARS = 4000
# control characters, line and paragraph separators, the zero-width space, bidirectional formatting characters
# (which reorder what a terminal shows: "Trojan Source", Boucher & Anderson 2021) and the byte-order mark; not
# the zero-width (non-)joiners U+200C-D, which Persian and Indic text and emoji need
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def printable(text: str) -> str:
    r"""`text` with control and formatting characters escaped as Python does (\n, \x1b, \u202e).

    A MEDS code holding a line break forged a line of `tokenize --decode` output, and one holding ESC coloured
    the terminal. Other text (accents, CJK) is kept as it is.
    """
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def one_line(text: str, limit: int = LINE_MAX_CHARS) -> str:
    """`text` as one printable line, at most `limit` characters and a note of how many more there were.

    Control characters are escaped (`printable`): a code holding a line break or ESC split a warning and coloured
    the terminal.
    """
    text = printable(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} characters more)"


def warn(line: str, command: str = "") -> None:
    """One warning line on stderr, `ehrfm[ COMMAND]: warning: LINE`, the one form every stage uses.

    Never silenced by EHRFM_QUIET (warnings are not progress); never carries patient values. Data's
    text in it (another tool's codes) is made one bounded line (one_line).
    """
    print(one_line(f"ehrfm{' ' + command if command else ''}: warning: {line}"), file=sys.stderr, flush=True)


_WARNED_ONCE: set[tuple[str, str]] = set()  # (kind, key) pairs already said by warn_once in this process


def warn_once(kind: str, key: str, line: str, command: str = "") -> bool:
    """`warn(line, command)` the first time this process meets (kind, key); True when it warned.

    For a fact about one input that many readers meet: a sweep's heads read one label file per run,
    a dataset's shards share one time zone; one line per file (or zone) and process, not one per read.
    kind names the fact ("label repeats"), key the input it is about (a path, a zone).
    """
    if (kind, key) in _WARNED_ONCE:
        return False
    _WARNED_ONCE.add((kind, key))
    warn(line, command)
    return True


def temporary_sibling(path: str | os.PathLike) -> Path:
    """`<path>.tmp-<pid>-<host>-<random>`: a fresh temporary name next to `path` (not created)."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{_HOST_TAG}-{secrets.token_hex(4)}")


# Before host tags, temporaries were `<out>.tmp-<pid>-<random>`: a killed run of that version left some.
_TEMPORARY_SUFFIX = re.compile(r"\.tmp-(\d+)-(?:([0-9a-f]{8})-)?[0-9a-f]{8}$")


def temporary_parts(name: str) -> tuple[str, int, str | None] | None:
    """(output name, pid, host tag) of a name `temporary_sibling` makes; None for any other name.

    The host tag is None in a name of the earlier form without one (taken as this machine's).
    """
    m = _TEMPORARY_SUFFIX.search(name)
    return (name[:m.start()], int(m[1]), m[2]) if m else None


def check_not_temporary(path: str | os.PathLike, what: str = "input") -> None:
    """Refuse an input that is, or lies inside, an unfinished output: a `temporary_sibling` of some output.

    A killed stage (kill -9, OOM, a node lost) leaves `<out>.tmp-<pid>-<host>-<random>` holding part
    of its output (a MEDS dataset without metadata/, a split missing, a label sidecar unwritten);
    read as an input it gave tokens, labels and a "clean" audit of 88 of 100 subjects.

    Raises:
        UserError: naming the path, the temporary and what to do.
    """
    for part in Path(path).parts:
        if (temporary := temporary_parts(part)) is not None:
            raise UserError(f"{what} {path} is the unfinished output of an ehrfm command ({part}: the temporary name of an "
                            "output that was never finished, e.g. its command was killed), so it may hold part of its "
                            f"data; rerun that command to its end and use its output ({temporary[0]})")


def pid_alive(pid: int) -> bool:
    """True when process `pid` exists on this machine and is not a zombie."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:
        return True  # alive, owned by another user
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def stale_temporaries(path: str | os.PathLike, other_hosts: bool = False) -> list[Path]:
    """The `temporary_sibling`s of `path` left by processes that are no longer alive.

    A temporary whose name carries another machine's host tag is reported only with
    `other_hosts=True` (for a caller that holds an exclusive lock on the directory, e.g. a trainer
    requeued on another node): its process may be alive there, on a shared filesystem. One of a
    live process on this machine is never reported.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    stale = []
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    for name in names:
        temporary = temporary_parts(name)
        if temporary is None or temporary[0] != path.name:
            continue
        _, pid, host = temporary
        if host not in (None, _HOST_TAG):
            if other_hosts:
                stale.append(parent / name)
        elif not pid_alive(pid):
            stale.append(parent / name)
    return sorted(stale)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete what `stale_temporaries(path)` finds (a kill -9 or SIGKILL leaves them); return them."""
    stale = stale_temporaries(path)
    for p in stale:
        _remove(p)
    return stale


_ERRNO_IN_TEXT = re.compile(r"(?:os error|errno)\s*(\d+)", re.IGNORECASE)


def _as_os_error(e: BaseException, out: Path, tmp: Path) -> OSError | None:
    """The OSError (errno, meaning, the user's path) behind a failed write, or None if not an OS error.

    Libraries report the same full disk differently (OSError without a file name from `write`,
    "os error 28" inside a polars or safetensors message, a short write from numpy); the user
    needs one thing: which output could not be written and why.
    """
    if not isinstance(e, Exception) or isinstance(e, UserError):
        return None  # interrupts and the user's own errors pass through as they are
    filename = getattr(e, "filename", None) if isinstance(e, OSError) else None
    if filename is not None and not str(filename).startswith(str(tmp)):
        return e  # about another path (an input): already named
    code = e.errno if isinstance(e, OSError) else None
    if code is None:
        m = _ERRNO_IN_TEXT.search(str(e))
        if m:
            code = int(m.group(1))
        elif isinstance(e, OSError):
            with contextlib.suppress(OSError):
                st = os.statvfs(out.parent)
                if st.f_bavail == 0 or st.f_favail == 0:
                    code = errno.ENOSPC
    if code is None:
        return OSError(None, str(e), str(out)) if isinstance(e, OSError) else None
    return OSError(code, os.strerror(code), str(out))


def as_os_error(e: BaseException, path: str | os.PathLike) -> OSError | None:
    """The OSError (errno, its meaning, `path`) behind a failed write under `path`, or None if `e` is not one.

    For writes outside atomic_dir/atomic_file (a scratch directory): a full disk reads as
    `os error 28` in a polars message, as a bare OSError from `write`, and so on.
    """
    return _as_os_error(e, Path(path), Path(path))


def check_output_given(out: str | os.PathLike | None, flag: str = "--out") -> None:
    """UserError for an output path that names no output of its own: empty, the working directory or above it.

    Path("") is ".", the working directory: `--out ''` read as "." offered to replace the directory the
    user stood in (`synth --out '' --overwrite`), and `--out .` or `--out ..` (no name of its own to make
    a temporary sibling of) failed with a traceback. Most outputs are written beside their final name and
    renamed into place; a run or sweep dir, written in place, is named from outside too (one rule for all).
    """
    if out is None:
        return
    text = os.fspath(out)
    if not text.strip():
        raise UserError(f"the output path is empty ({flag} ''): give a path")
    path = Path(text).expanduser().absolute()
    resolved, here = Path(os.path.normpath(path)), Path.cwd()
    if resolved == here or resolved in here.parents or not resolved.name:
        raise UserError(f"output {text} is the working directory or a directory above it: name an output from "
                        f"outside it (`cd ..`, then {flag} NAME), or a new directory inside it ({flag} ./out)")


def check_writable_path(out: str | os.PathLike) -> None:
    """Raise UserError when `out` lies under a regular file (no directory can be made there)."""
    out = Path(out)
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"output {out}: {parent} is a regular file, not a directory (ENOTDIR); choose another --out")
            return


def _reraise_named(e: BaseException, out: Path, tmp: Path) -> None:
    named = _as_os_error(e, out, tmp)
    if named is not None and named is not e:
        raise named from e


# Left in every directory ehrfm writes (atomic_dir, run dirs, the demo), holding the command's name:
# --overwrite replaces only a directory that holds it (or an empty one), never a user's own.
OUTPUT_MARKER = ".ehrfm-output"


OUTPUT_FILES = ".ehrfm-files"  # beside the marker in an output written whole: the files its command wrote


def mark_output(out: str | os.PathLike, command: str, entries=None) -> None:
    """Write `out`/OUTPUT_MARKER (the command's name): `out` is an ehrfm output that --overwrite may replace.

    Given `entries` (the files the command wrote, as paths relative to `out`, for outputs written whole:
    atomic_dir), also `out`/OUTPUT_FILES listing them one per line, so that a later --overwrite refuses to delete
    what a user put there since (check_ehrfm_output). A file of its own: the marker an older ehrfm reads stays
    the command's name alone.
    """
    (Path(out) / OUTPUT_MARKER).write_text(command + "\n", encoding="utf-8")
    if entries is not None:
        (Path(out) / OUTPUT_FILES).write_text("".join(f"{e}\n" for e in sorted(entries)), encoding="utf-8")


def output_files(out: str | os.PathLike) -> list[str]:
    """Every file under the directory `out` but its marker and file list, as sorted POSIX paths relative to `out`."""
    out = Path(out)
    found = []
    for root, _dirs, files in os.walk(out):
        rel = Path(root).relative_to(out)
        found += [(rel / f).as_posix() for f in files]
    return sorted(f for f in found if f not in (OUTPUT_MARKER, OUTPUT_FILES))


def output_entries(out: str | os.PathLike) -> set[str] | None:
    """The files the command wrote in the output dir `out` (its OUTPUT_FILES, relative paths), or None.

    None without that list: an output written bit by bit (a run dir, a demo dir), or by an older ehrfm.
    """
    try:
        return set((Path(out) / OUTPUT_FILES).read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError):
        return None


def check_not_input(out: str | os.PathLike, inputs=()) -> None:
    """Raise UserError when `out` is, holds or lies inside one of `inputs` (symlinks resolved).

    Writing there would replace (or, with --overwrite, delete) the command's own input. None
    entries of `inputs` are skipped.
    """
    o = Path(out).resolve()
    for i in inputs:
        if i is None:
            continue
        p = Path(i).resolve()
        where = "is" if o == p else "lies inside" if o.is_relative_to(p) else "holds" if p.is_relative_to(o) else None
        if where:
            raise UserError(f"output {out} {where} the input {i}: writing it would replace the command's own input; "
                            "choose another --out")


# Outputs read as a whole by the next stage: a MEDS dir's readers take every parquet file under data/, a token dir
# and a raw dir are read by their layout. Others may hold a user's files (label files beside ours in a labels dir,
# heads inside a run dir), and the demo's dir holds its stages' outputs.
DATA_OUTPUTS = ("synth", "etl", "tokenize")


def check_not_inside_output(out: str | os.PathLike) -> None:
    """Raise UserError when `out` lies inside a data output (DATA_OUTPUTS: an ancestor's OUTPUT_MARKER names one).

    `etl --out meds/data/train/x` made its codes.parquet a shard of that MEDS dataset: `ehrfm tokenize meds`
    failed ("lacks column 'subject_id'"), and the dataset's --overwrite was refused once it held the stranger.
    """
    o = Path(out).resolve()
    for parent in o.parents:
        command = output_command(parent)
        if command in DATA_OUTPUTS:
            raise UserError(f"output {out} lies inside {parent}, the output of `ehrfm {command}`: writing there would "
                            "change that data (its readers take what it holds); choose an --out outside it")


def output_command(out: str | os.PathLike) -> str | None:
    """The ehrfm command whose output directory `out` is (its OUTPUT_MARKER), or None without a marker."""
    marker = Path(out) / OUTPUT_MARKER
    if not marker.is_file():
        return None
    try:
        return marker.read_text(encoding="utf-8").strip() or "ehrfm"
    except (OSError, UnicodeDecodeError):
        return "?"


FILE_OUTPUT_KEY = "ehrfm_output"
"""A one-file output's mark (its command's name): a top-level key of a .json (a .parquet's: PARQUET_OUTPUT_KEY)."""
PARQUET_OUTPUT_KEY = b"ehrfm.output"
"""The same mark as a key of a .parquet's schema metadata."""


def file_output_command(path: str | os.PathLike) -> str | None:
    """The ehrfm command that wrote the one-file output `path`, or None: not recognisably ehrfm's, or unreadable.

    Told by content, whatever the file's name (`--out audit.txt`, `L.PQ`): a parquet file (its
    magic bytes) by its metadata's PARQUET_OUTPUT_KEY; a JSON object by its FILE_OUTPUT_KEY. Outputs
    written before the mark existed are recognised by their shape: an audit JSON (meds_dir, labels,
    tasks, clean), a label sidecar (task, config, n), and a label parquet (exactly the MEDS label
    columns) beside such a sidecar.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PAR1":
            schema = pq.read_schema(path)
            made_by = ((schema.metadata or {}).get(PARQUET_OUTPUT_KEY) or b"").decode("utf-8")
            if not made_by and sorted(schema.names) == ["boolean_value", "prediction_time", "subject_id"]:
                made_by = "labels" if file_output_command(path.with_suffix(".json")) == "labels" else ""
            return made_by or None
        if path.stat().st_size > 64 << 20:  # no JSON output of ehrfm is this large
            return None
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):  # (pyarrow's ArrowInvalid and JSONDecodeError are ValueErrors)
        return None
    if not isinstance(d, dict):
        return None
    made_by = d.get(FILE_OUTPUT_KEY)
    if isinstance(made_by, str) and made_by:
        return made_by
    if {"meds_dir", "labels", "tasks", "clean"} <= d.keys():
        return "audit"
    if {"task", "config", "n"} <= d.keys():
        return "labels"
    return None


def check_ehrfm_output(out: str | os.PathLike, ignore=(), command: str | None = None) -> None:
    """Raise UserError when --overwrite may not empty (or replace) `out`.

    That is: a non-empty directory without OUTPUT_MARKER (ehrfm did not write it), or, with `command`,
    the output of another ehrfm command (`ehrfm train --out MEDS --overwrite` deleted a MEDS dataset,
    hours of ETL, without a word). A marker of no command ("ehrfm", an older release) is not refused.
    Files named in `ignore` (e.g. a run dir's lock) do not count as content. A directory whose marker
    lists what its command wrote (atomic_dir) is refused when it holds anything else: a user's own
    file there (notes, their labels beside ours) would be deleted with it. An existing file is
    replaced only when its content shows that `command` wrote it (file_output_command: its mark, or
    an older output's shape), whatever its name: `ehrfm audit --out R/result.json --overwrite`
    replaced a training run's result, `--out ~/notes.txt` a user's file.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        made_by = file_output_command(out)
        if made_by is None:
            raise UserError(f"output {out} is a file ehrfm did not write (no {FILE_OUTPUT_KEY} mark); --overwrite replaces "
                            "only an earlier output of the same command: choose another --out, or remove it by hand if it "
                            "is really an old ehrfm output")
        if command is not None and made_by != command:
            raise UserError(f"output {out} holds the output of `ehrfm {made_by}`, not of `ehrfm {command}`; --overwrite "
                            f"replaces only an earlier output of `ehrfm {command}`: choose another --out, or remove it by hand")
        return
    made_by = output_command(out) if out.is_dir() else None
    if made_by is not None:
        # (a head's marker names its variant: finetune_full and finetune_head are outputs of `ehrfm finetune`)
        if command is not None and made_by != "ehrfm" and made_by.split("_")[0] != command.split("_")[0]:
            by = "an unknown command (its marker cannot be read)" if made_by == "?" else f"`ehrfm {made_by}`"
            raise UserError(f"output {out} holds the output of {by}, not of `ehrfm {command}`; --overwrite "
                            f"replaces only an earlier output of `ehrfm {command}`: choose another --out, or remove it by hand")
        wrote = output_entries(out)
        if wrote is not None:
            added = [f for f in output_files(out) if f not in wrote and f.split("/")[0] not in ignore]
            if added:
                shown = ", ".join(added[:5]) + (f" and {len(added) - 5} more" if len(added) > 5 else "")
                raise UserError(f"output {out} holds {len(added)} file(s) that `ehrfm {made_by}` did not write there "
                                f"({shown}): --overwrite would delete them with the rest; move them out of {out}, or "
                                "choose another --out")
        return
    if not out.is_dir():
        return
    found = [p.name for p in out.iterdir() if p.name not in ignore]
    if found:
        raise UserError(f"output {out} is a directory ehrfm did not write ({len(found)} entries, no {OUTPUT_MARKER}); "
                        "--overwrite replaces only ehrfm outputs: choose another --out, or remove it by hand if it "
                        "is really an old ehrfm output")


def check_own_entries(out: str | os.PathLike, own, command: str, patterns=()) -> None:
    """Raise UserError when the directory `out` holds a top-level entry its command does not write there.

    For outputs written as they go (a run dir, a demo's dir), which keep no list of their files
    (OUTPUT_FILES): `ehrfm train --out RUN --overwrite` deleted a user's notes and a whole run trained
    inside RUN, without a word. `own`: the entry names the command writes; `patterns`: fnmatch patterns
    of more (TensorBoard's event files); a temporary of an own entry (temporary_sibling) is its own too.
    """
    import fnmatch

    out = Path(out)
    if not out.is_dir():
        return

    def ours(name: str) -> bool:
        parts = temporary_parts(name)
        name = parts[0] if parts else name
        return name in own or name in (OUTPUT_MARKER, OUTPUT_FILES) or any(fnmatch.fnmatch(name, p) for p in patterns)

    added = sorted(p.name for p in out.iterdir() if not ours(p.name))
    if added:
        shown = ", ".join(added[:5]) + (f" and {len(added) - 5} more" if len(added) > 5 else "")
        raise UserError(f"output {out} holds {len(added)} entr{'y' if len(added) == 1 else 'ies'} that `ehrfm {command}` "
                        f"does not write there ({shown}): --overwrite would delete them with the rest; move them out of "
                        f"{out}, or choose another --out")


def check_file_output(out: str | os.PathLike, flag: str = "--out", suffix: str | None = None) -> None:
    """Refuse a one-file output named as a directory, or (given `suffix`, e.g. ".parquet") with another suffix.

    A directory: a trailing '/' or an existing one.

    Path("x/") is Path("x"), so `--out x/` wrote a file named x where a directory was meant; and
    `--out labels.csv` wrote parquet bytes under a CSV name, which every CSV reader then misread.

    Raises:
        UserError: naming the flag and the path.
    """
    given = os.fspath(out)
    if given.endswith(("/", os.sep)) or Path(given).is_dir():
        raise UserError(f"{flag} {given}: this command writes one file there, and that names a directory; "
                        f"give a file path (e.g. DIR/name{suffix or '.parquet'})")
    if suffix is not None and Path(given).suffix and Path(given).suffix.lower() != suffix:  # (no suffix: as named)
        raise UserError(f"{flag} {given}: this command writes a {suffix[1:]} file; name it with {suffix} "
                        f"(e.g. {Path(given).with_suffix(suffix).name})")


def check_overwrite(out: str | os.PathLike, overwrite: bool, inputs=(), command: str | None = None) -> None:
    """The one overwrite check, for directory and single-file outputs.

    Stages call it before hours of work (not only when the output is renamed into place).

    Args:
        out: the output path.
        overwrite: whether --overwrite was given.
        inputs: the command's input paths (files or dirs; None skipped).
        command: the ehrfm command writing `out`: a directory another command wrote is refused.

    Raises:
        UserError: `out` is, holds or lies inside an input (check_not_input); `out` exists and
            `overwrite` is false; or `out` is a non-empty directory ehrfm did not write
            (check_ehrfm_output), or with `command` another command's output.
    """
    check_output_given(out)
    check_not_input(out, inputs)
    check_not_inside_output(out)
    if not Path(out).exists():
        return
    if not overwrite:
        raise UserError(f"output {out} already exists; pass --overwrite to replace it")
    check_ehrfm_output(out, command=command)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False, inputs=(), command: str = "ehrfm") -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` only if the block succeeds.

    Refuses (UserError) what check_overwrite refuses (`out` exists without `overwrite`, `out` is,
    holds or lies inside one of `inputs`, `out` is a non-empty directory ehrfm did not write),
    and an `out` that is not a directory. The directory gets OUTPUT_MARKER holding `command`, so a
    later --overwrite may replace it, and OUTPUT_FILES listing the files the block wrote, so that it never
    deletes one a user adds later (check_ehrfm_output). Temporaries of `out` left by dead processes are removed first. On any exception
    (including KeyboardInterrupt and ehrfm.app.cli's SIGTERM) the temporary directory is removed and
    `out` is left exactly as it was; an OS error while writing (full disk, read-only filesystem)
    is re-raised as an OSError naming `out` and the errno. An existing `out` (with `overwrite`) is
    swapped for the new one with Ctrl-C and SIGTERM held off (signals_deferred), so no signal
    leaves the user without either.
    """
    out = Path(out)
    check_writable_path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is a regular file, not a directory; choose another --out")
    check_overwrite(out, overwrite, inputs, command=None if command == "ehrfm" else command)
    tmp = temporary_sibling(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        tmp.mkdir()
    except OSError as e:
        _reraise_named(e, out, tmp)
        raise
    try:
        mark_output(tmp, command)
        yield tmp
        mark_output(tmp, command, entries=output_files(tmp))
        # a test can stop or kill the process here, with the whole output in the temporary
        fault_points.hold("atomic-dir", out.name)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _reraise_named(e, out, tmp)
        raise
    if (out.exists() or out.is_symlink()) and not overwrite:
        # another process made `out` while this one worked (two `ehrfm etl --out X` at once): swapping it
        # out would replace that output without --overwrite, and both commands would say they wrote X
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"output {out} appeared while this command ran (another command wrote it?); nothing was written: "
                        "pass --overwrite to replace it, or choose another --out")
    try:
        if out.exists() or out.is_symlink():
            old = temporary_sibling(out)
            try:
                with signals_deferred():  # Ctrl-C or SIGTERM between the two renames would leave no `out`
                    os.replace(out, old)
                    os.replace(tmp, out)
            finally:
                if not tmp.exists():  # swapped: the old output goes (a symlinked `out`: the link, not its target)
                    _remove(old)
                elif not out.exists() and old.exists():  # the second rename failed (EIO, ...): the old output goes back
                    os.replace(old, out)
        else:
            os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _reraise_named(e, out, tmp)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of `path` for writing; rename it to `path` on success.

    Temporaries of `path` left by dead processes are removed first; an OS error while writing is
    re-raised as an OSError naming `path` (see atomic_dir).
    """
    path = Path(path)
    check_writable_path(path)
    if path.is_dir():
        raise UserError(f"output {path} is a directory, not a file; choose another path")
    tmp = temporary_sibling(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        _reraise_named(e, path, tmp)
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread for the block: a process started inside it inherits the block for good.

    Ctrl-C reaches a terminal's whole process group. A helper process started here (an ETL worker,
    submitit's local job controller) never takes it, so it prints no KeyboardInterrupt traceback of
    its own; this process gets it and stops the helpers its own way (a worker pool's terminate, a
    launch's SIGTERM to each job, which checkpoints its trainer). A no-op where signals cannot be masked.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def keep_sigint_ignored() -> None:
    """In a process that inherited SIGINT ignored, import polars and put the ignore back (main thread only).

    polars (>= 1.22, pola-rs/polars#20961) installs its own SIGINT hook when first imported, over
    whatever the process had. A process that inherited SIGINT as ignored (a background job of a
    script, `ehrfm sweep launch ... &`; a trainer that leaves Ctrl-C to its job wrapper) then
    caught it: the children it exec'd took the default action and died of a Ctrl-C the shell
    meant for no one, and a polars query under way raised KeyboardInterrupt. Elsewhere polars'
    hook stays: in a terminal's foreground it is what cancels a running query at once (without it
    Ctrl-C waits for `collect()` to return). Called first by the CLI and the trainer
    (sweeps.run_one); a sweep job process never imports polars, so its inherited ignore holds.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        return
    import polars  # noqa: F401 (imported for its side effect: the hook this undoes)

    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def signals_deferred(signums=(signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold off Ctrl-C and SIGTERM for a few steps that must not be cut apart (renames that go together).

    Their Python handlers are swapped for a recorder; a signal that arrived meanwhile is handed to
    its own handler when the block ends (KeyboardInterrupt, ehrfm.app.cli's Terminated). Masking
    the signal would not do: the kernel hands it to another thread, and Python still raises it in
    the main thread. A no-op outside the main thread (no Python handler runs there) and when a
    handler was not set from Python (it could not be put back).
    """
    if threading.current_thread() is not threading.main_thread() or any(signal.getsignal(s) is None for s in signums):
        yield
        return
    arrived: list[int] = []
    old = {s: signal.getsignal(s) for s in signums}  # known before any is swapped: all go back whatever interrupts
    try:
        for s in signums:
            signal.signal(s, lambda signum, frame: arrived.append(signum))
        yield
    finally:
        # A restored handler may run (Ctrl-C raises KeyboardInterrupt) before the others are restored: finish
        # restoring all of them, then raise what it raised, so no signal is left on the recorder for good.
        raised, pending = None, list(old.items())
        while pending:
            try:
                signal.signal(*pending[0])
                pending.pop(0)
            except BaseException as e:  # noqa: BLE001 (re-raised below, once every handler is back)
                raised = raised or e
        if raised is not None:
            raise raised
        for s in arrived[:1]:
            if callable(old[s]):
                old[s](s, None)
            elif old[s] == signal.SIG_DFL:
                signal.raise_signal(s)


@contextlib.contextmanager
def atomic_files(*paths: str | os.PathLike) -> Iterator[tuple[Path, ...]]:
    """Yield a temporary path for each of `paths`, files that belong together (labels and their sidecar JSON).

    The caller writes each temporary whole; on success the old `paths` are removed and the
    temporaries renamed into place with Ctrl-C and SIGTERM held off (signals_deferred). So a file
    is never left beside another run's partner: an interrupt before the renames leaves the old
    files, after them the new ones (only a kill -9 between two renames can leave one absent, never
    stale). On failure the temporaries are removed; an OS error names the path (see atomic_dir).
    """
    paths = tuple(Path(p) for p in paths)
    for path in paths:
        check_writable_path(path)
        if path.is_dir():
            raise UserError(f"output {path} is a directory, not a file; choose another path")
    tmps = tuple(temporary_sibling(p) for p in paths)
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(path)
        yield tmps
        with signals_deferred():
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            for tmp, path in zip(tmps, paths, strict=True):
                os.replace(tmp, path)
    except BaseException as e:
        where = getattr(e, "filename", None) or ""
        i = next((i for i, t in enumerate(tmps) if str(where).startswith(str(t))), 0)
        _reraise_named(e, paths[i], tmps[i])
        raise
    finally:
        for tmp in tmps:
            _remove(tmp)


def to_jsonable(obj: Any) -> Any:
    """Obj as json.dump takes it: dataclasses and dicts as objects, tuples as lists, paths as strings, scalars as numbers."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    return obj


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Atomically write `obj` (dataclasses, paths and numpy scalars allowed) as JSON."""
    with atomic_file(path) as f:
        json.dump(to_jsonable(obj), f, indent=indent, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike, what: str = "file", expect: type | None = None, hint: str = "") -> Any:
    """Parse a JSON file ehrfm wrote (or a user gave), or raise one clear UserError.

    Args:
        path: the file.
        what: what it is, for the message ("run result", "sweep config").
        expect: the type the top level must have (dict for every ehrfm JSON object); None: any.
        hint: what the user can do about a damaged file, appended to the message.

    Raises:
        UserError: missing, unreadable, truncated/empty/not JSON, or not of type `expect`; the
            message names the file, never its content.
    """
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if not path.is_file():
        raise UserError(f"{what} {path} not found{tail}")
    try:
        obj = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" (line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
        empty = " (empty file)" if path.stat().st_size == 0 else where
        raise UserError(f"{what} {path} is damaged: not valid JSON{empty}{tail}") from None
    if expect is not None and not isinstance(obj, expect):
        raise UserError(f"{what} {path} is damaged: a JSON {type(obj).__name__} where a JSON "
                        f"{'object' if expect is dict else expect.__name__} was expected{tail}")
    return obj


def read_parquet(path: str | os.PathLike, what: str = "file", hint: str = "", columns: list[str] | None = None):
    """Read a parquet file into a pyarrow Table, or raise one clear UserError naming the file.

    A truncated or overwritten file (no footer, bad magic bytes, a corrupt page) is reported as
    damaged with `hint` (what to do), never as a pyarrow traceback. Raises UserError also when
    the file is missing.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if not path.is_file():
        raise UserError(f"{what} {path} not found{tail}")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as e:
        reason = "empty file" if path.stat().st_size == 0 else type(e).__name__
        raise UserError(f"{what} {path} is damaged: not a readable parquet file ({reason}){tail}") from None


def repeated_columns(path: str | os.PathLike) -> dict[str, int]:
    """{name: count} of the column names a parquet file holds more than once ({} when unreadable).

    pyarrow writes such files (a join that kept both sides' column); polars refuses them with a
    DuplicateError and pyarrow's reader with ArrowInvalid, which ehrfm's readers reported as "not a
    readable parquet file" (or as a traceback). Which column is meant is not ours to guess.
    """
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception:  # noqa: BLE001 (unreadable: the caller's own read names it)
        return {}
    return {n: names.count(n) for n in dict.fromkeys(names) if names.count(n) > 1}


def refuse_repeated_columns(path: str | os.PathLike, what: str) -> None:
    """UserError naming `what` `path`, its first repeated column and how often it appears (repeated_columns)."""
    rep = repeated_columns(path)
    if rep:
        name, n = next(iter(rep.items()))
        raise UserError(f"{what} {path}: column {name!r} appears {n} times ({len(rep)} repeated name(s)); which one is "
                        "meant is not certain: drop or rename all but one")


@functools.cache
def _polars_reads_zone(zone: str) -> bool:
    """Whether polars parses the time zone name `zone` (IANA names, UTC and +00:00 do; 'Z' and other fixed offsets not)."""
    import polars as pl

    try:
        pl.Series([0], dtype=pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone(zone)
    except Exception:  # noqa: BLE001 (polars raises ComputeError, or a newer type, for a name it cannot parse)
        return False
    return True


def zones_polars_cannot_read(schema) -> list[tuple[str, str]]:
    """(column, zone) of each timestamp of a pyarrow schema whose time zone polars cannot parse.

    'Z' and fixed UTC offsets other than +00:00 ('+05:30', '-05:00': what pyarrow writes for a
    pandas or Python datetime.timezone offset) are valid arrow zones, but polars panics on a file
    that holds one (a Rust backtrace through any reader, not an exception), so readers look at the
    footer's schema first. Struct fields are searched too, named "column.field".
    """
    import pyarrow as pa

    found = []

    def walk(name: str, t) -> None:
        if pa.types.is_timestamp(t) and t.tz is not None and not _polars_reads_zone(t.tz):
            found.append((name, t.tz))
        elif pa.types.is_struct(t):
            for i in range(t.num_fields):
                walk(f"{name}.{t.field(i).name}", t.field(i).type)
        elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            walk(name, t.value_type)

    for field in schema:
        walk(field.name, field.type)
    return found


def as_utc_zones(table):
    """A pyarrow table whose top-level timestamps with a zone polars cannot parse ('Z', '+05:30') are zoned UTC.

    Exact: an arrow timestamp with a zone stores the UTC instant, so only the zone's name changes
    (the instants, and so the times polars reads, are the same). Nested ones are left as they are.
    """
    import pyarrow as pa

    for name, _ in zones_polars_cannot_read(table.schema):
        if name in table.column_names:
            i = table.column_names.index(name)
            t = table.schema.field(i).type
            table = table.set_column(i, name, table.column(i).cast(pa.timestamp(t.unit, tz="UTC")))
    return table


def check_parquet_files(paths, what: str = "file", hint: str = "") -> None:
    """Read the footer of each parquet file; UserError naming the first truncated or non-parquet one.

    For stages that read many files lazily (polars scans), where a damaged file would otherwise
    surface later as an error naming no file, or a time zone polars cannot parse as a Rust panic
    (zones_polars_cannot_read), also refused naming the file and column. Costs one small read per file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    tail = f"; {hint}" if hint else ""
    for path in paths:
        path = Path(path)
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError, ValueError) as e:
            reason = "empty file" if path.is_file() and path.stat().st_size == 0 else type(e).__name__
            raise UserError(f"{what} {path} is damaged: not a readable parquet file ({reason}){tail}") from None
        if bad := zones_polars_cannot_read(schema):
            col, zone = bad[0]
            raise UserError(f"{what} {path}: column {col} has time zone {zone!r} (a fixed UTC offset, as 'Z' and '+05:30' "
                            "are), which ehrfm's parquet reader (polars) cannot read: write its times in UTC (time zone "
                            "'UTC') or without a zone")


def load_npy(path: str | os.PathLike, what: str = "array", hint: str = "", mmap_mode: str | None = "r"):
    """np.load of a .npy file ehrfm wrote (memory-mapped by default), or one clear UserError.

    A truncated, empty or overwritten file (bad magic, a header promising more bytes than the file
    holds) is named as damaged with `hint`, never shown as a numpy traceback. Pickled object
    arrays are refused (allow_pickle=False).
    """
    import numpy as np

    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if not path.is_file():
        raise UserError(f"{what} {path} not found{tail}")
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        reason = "empty file" if path.stat().st_size == 0 else type(e).__name__
        raise UserError(f"{what} {path} is damaged: not a readable .npy array ({reason}){tail}") from None


def format_ci(x, ci=None, fmt: str = "{:.3g}") -> str:
    """'0.812 [0.771, 0.850]': a value with its interval; 'n/a' for a missing or non-finite value.

    An interval given but not available (None or non-finite ends: too few bootstrap replicates
    fitted) prints as '[n/a]', never as if the value were certain.
    """
    import math

    if x is None or not math.isfinite(x):
        return "n/a"
    s = fmt.format(x)
    if ci is not None and len(ci) == 2:
        ok = all(v is not None and math.isfinite(v) for v in ci)
        s += f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ok else " [n/a]"
    return s


def markdown_table(header: list[str], rows) -> list[str]:
    """The lines of a Markdown table: `header` (column titles), then one line per row (cells as str)."""
    return [f"| {' | '.join(header)} |", "|" + "---|" * len(header), *(f"| {' | '.join(map(str, r))} |" for r in rows)]


def text_table(columns: list[tuple[str, str, str]], rows: list[dict]) -> list[str]:
    """The lines of a fixed-width text table (a header, then one line per row).

    Args:
        columns: (row key, title, format spec with alignment and width, e.g. ">8.2g" or "<34");
            a missing or None cell prints "-".
        rows: dicts with the columns' keys.
    """
    def width(spec: str) -> str:  # "<34" / ">8.2g" -> the alignment and width alone
        return spec[0] + "".join(c for c in spec[1:].split(".")[0] if c.isdigit())

    lines = [" ".join(format(title, width(spec)) for _, title, spec in columns)]
    for r in rows:
        lines.append(" ".join(format("-", width(spec)) if r.get(key) is None else format(r[key], spec)
                              for key, _, spec in columns))
    return lines


def progress(iterable=None, **kwargs):
    """A tqdm progress bar on stderr; quiet when EHRFM_QUIET=1 (tests, nested stages)."""
    from tqdm.auto import tqdm

    global _bars_shown
    kwargs.setdefault("disable", os.environ.get("EHRFM_QUIET") == "1")
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    # In a log file (SLURM, CI, nohup) a bar redrawn ten times a second floods it: redraw twice a minute.
    kwargs.setdefault("mininterval", 0.1 if _isatty(kwargs["file"]) else 30.0)
    _bars_shown = _bars_shown or not kwargs["disable"]
    return tqdm(iterable, **kwargs)


_bars_shown = False  # a bar wrote to stderr in this process: an error line must start a new line


def _isatty(f) -> bool:
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def error_line(text: str) -> str:
    """`text` made ready to be the last line of stderr: one bounded line (one_line).

    Bars still open (an error unwound past them) are closed first, and a newline ends any partial
    bar line they left.
    """
    text = one_line(text)
    if not _bars_shown:
        return text
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):  # tqdm keeps its live bars here
        bar.close()
    return "\n" + text


def summary(line: str) -> None:
    """The one-line summary each long stage ends with (stdout, so scripts can capture it)."""
    print(line, flush=True)


def free_memory(device) -> int | None:
    """Bytes free on a device: CUDA's free memory, the host's MemAvailable for cpu; None if unknown."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None
