"""Shared file helpers: atomic outputs, JSON with dataclasses, progress bars.

Every stage writes through these so that an interrupted run never leaves a half-written output:
directories are built under `<out>.tmp-<pid>-<random>` and renamed into place; single files are
written to a temporary sibling and `os.replace`d.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ehrfm.errors import UserError


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` only if the block succeeds.

    Refuses (UserError) when `out` exists and `overwrite` is false. On any exception the
    temporary directory is removed and `out` is left exactly as it was.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"output {out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(out)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = _tmp_sibling(out)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of `path` for writing; rename it to `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    return obj


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Atomically write `obj` (dataclasses, paths and numpy scalars allowed) as JSON."""
    with atomic_file(path) as f:
        json.dump(_to_jsonable(obj), f, indent=indent, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is not valid JSON (line {e.lineno})") from None


def format_ci(x, ci=None, fmt: str = "{:.3g}") -> str:
    """'0.812 [0.771, 0.850]': a value with its interval; 'n/a' for a missing or non-finite value."""
    import math

    if x is None or not math.isfinite(x):
        return "n/a"
    s = fmt.format(x)
    if ci and all(v is not None and math.isfinite(v) for v in ci):
        s += f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"
    return s


def progress(iterable=None, **kwargs):
    """A tqdm progress bar on stderr; quiet when EHRFM_QUIET=1 (tests, nested stages)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", os.environ.get("EHRFM_QUIET") == "1")
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def summary(line: str) -> None:
    """The one-line summary each long stage ends with (stdout, so scripts can capture it)."""
    print(line, flush=True)
