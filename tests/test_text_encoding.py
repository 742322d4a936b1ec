"""Every text file ehrfm reads or writes is UTF-8, whatever the locale (since 2026-12-03).

Before, tokenizer.json (written with ensure_ascii=False), run markers, job records and the other
text files went through the locale's encoding: under LC_ALL=C a non-ASCII code failed tokenize
with a UnicodeEncodeError traceback (tests/test_tokenize.py runs it). This guard keeps every
text-mode open()/read_text()/write_text() of the library packages naming its encoding.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("tokenization", "ehrfm", "sweeps", "analysis")


def _text_io_without_encoding(root: Path) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Call) or "encoding" in {k.arg for k in node.keywords}:
                    continue
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                owner = getattr(getattr(f, "value", None), "id", None)
                if name in ("read_text", "write_text"):
                    found.append(f"{path.relative_to(root)}:{node.lineno} {name}()")
                elif name == "open" and owner != "os":
                    mode_at = 0 if isinstance(f, ast.Attribute) and owner not in ("gzip", "io", "bz2", "lzma") else 1
                    mode = node.args[mode_at] if len(node.args) > mode_at else next(
                        (k.value for k in node.keywords if k.arg == "mode"), None)
                    text = "r" if mode is None and owner != "gzip" else mode.value if isinstance(mode, ast.Constant) else "?"
                    if text is not None and "b" not in str(text):
                        found.append(f"{path.relative_to(root)}:{node.lineno} open(mode={text!r})")
    return found


def test_every_text_file_is_opened_as_utf8(repo_root):
    assert _text_io_without_encoding(repo_root) == []
