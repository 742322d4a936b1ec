"""argparse options derived from config dataclasses: each default and help text is written once.

A subcommand whose options mirror a config dataclass declares which fields it exposes; each field
becomes one argument (flag `--field-name`, type from the annotation, default from the dataclass,
help from the field's attribute docstring, choices from its metadata "choices"), and the parsed
namespace is turned back into the dataclass by `build`:

    p = sub.add_parser("train", ...)
    add_fields(p, TrainConfig, ["lr", "seed"], out_dir=dict(flag="--out", metavar="RUN", required=True))
    ...
    cfg = build(TrainConfig, args)

Attribute docstrings (a string literal on the line after the field) are read from the class's
source, as litgpt/jsonargparse and tyro read them. Per-field overrides (keyword arguments named
after the field) are argparse keyword arguments plus:
    flag      the option string ("--out"), or a positional's name (it must be the field's name)
    convert   applied to the parsed value by `build` (e.g. "1,2" -> [1, 2]); may raise UserError
    unset     True: the parser default is None and `build` leaves the field at its dataclass
              default (for options whose default depends on others, e.g. `ehrfm demo --quick`)
Help shows the dataclass default as "(default: X)" unless it is None, False, empty or required.

`Parser.defer` postpones adding a subcommand's arguments until that subcommand is parsed or its
help is shown, so `ehrfm --help` imports no config module, and `ehrfm fit --help` only its own.
This module imports only the standard library.
"""

from __future__ import annotations

import argparse
import math
import re
import sys

# Only argparse at top level: `ehrfm --help` builds every subcommand's parser and must stay instant
# (dataclasses, inspect, ast and typing are imported by the functions that need them).

DERIVED = "_derived_fields"  # namespace attribute: {config class: [(field, convert, unset)]}


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to the help of derived options that have a default worth showing."""

    def _get_help_string(self, action):
        shown = getattr(action, "shown_default", None)
        text = action.help or ""
        return f"{text} (default: {shown.replace('%', '%%')})" if shown is not None else text


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose arguments may be added on first use (`defer`); its subparsers are too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        # No prefix matching: `--worker 2` was taken for --workers and `--over` for --overwrite, silently; a
        # flag is written whole or refused with the nearest one named (ehrfm.app.cli.main).
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._pending: list = []
        # A value like -1e9, -.5e-3 or -inf is a (negative) number, not an option: argparse's own pattern
        # (-1, -1.5) took `--budgets -1e9` for a missing value ("expected one argument") instead of letting
        # the option's own check say what is wrong with it. No ehrfm option looks like a number.
        import re

        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)

    def defer(self, add_arguments) -> None:
        """Call `add_arguments(self)` just before this parser first parses or formats its help."""
        self._pending.append(add_arguments)

    def populate(self) -> Parser:
        """Add the deferred arguments now (tests and tools that inspect the parser call this)."""
        while self._pending:
            self._pending.pop(0)(self)
        return self

    def parse_known_args(self, args=None, namespace=None):
        """As argparse.ArgumentParser.parse_known_args, after adding the deferred arguments.

        Keeps the words parsed for `error` (a subcommand's parser gets its own).
        """
        self.populate()
        self._words = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def format_help(self):
        """As argparse.ArgumentParser.format_help, after adding the deferred arguments."""
        self.populate()
        return super().format_help()

    def format_usage(self):
        """As argparse.ArgumentParser.format_usage, after adding the deferred arguments."""
        self.populate()
        return super().format_usage()

    def error(self, message: str):
        """One line on stderr, exit 2, like every other ehrfm error (argparse prints its whole usage first).

        The line names the command and ends with where the flags are listed. A flag whose value starts
        with "-" (`--split-fractions -1,1,1`, `--lr -1`) is read by argparse as a missing value; the
        line then says how to pass one (FLAG=VALUE), so the value itself can be checked.
        """
        m = re.match(r"argument (\S+?)(?:/\S+)?: expected (?:one|\d+) argument", message)
        flag = m and m.group(1)
        words = list(getattr(self, "_words", None) or [])
        after = [words[i + 1] for i, w in enumerate(words[:-1]) if w == flag]  # what argparse took for the next flag
        if flag and flag.startswith("--") and any(a[:1] == "-" and (a[1:2].isdigit() or a[1:2] == ".") for a in after):
            message += f" (a value that starts with '-' reads as a flag: write {flag}=VALUE)"
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def unrecognized(self, words: list[str]):
        """Exit as `error` for words this command does not take, naming the nearest flag to each mistyped one."""
        import difflib

        flags = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        near = {}
        for w in words:
            flag = w.split("=", 1)[0]
            if flag.startswith("--") and flag not in flags and (close := difflib.get_close_matches(flag, flags, n=1, cutoff=0.6)):
                near[flag] = close[0]
        hint = "".join(f"; did you mean {m} for {f}?" for f, m in near.items())
        self.error(f"unrecognized arguments: {' '.join(words)}{hint}")



def command(sub, name: str, run, arguments=None, **kwargs) -> argparse.ArgumentParser:
    """Add subcommand `name` to the subparsers action `sub`, run by `run(args) -> exit code`.

    Args:
        sub: what `add_subparsers()` returned.
        name: the subcommand's name.
        run: called with the parsed namespace; returns the exit code.
        arguments: `arguments(parser)` adds its options, deferred until the subcommand is parsed or
            its help shown (None: the caller adds them to the returned parser).
        **kwargs: `add_parser` keyword arguments (help, description).

    Returns:
        The subcommand's parser.
    """
    p = sub.add_parser(name, **kwargs)
    if arguments is not None:
        p.defer(arguments)
    p.set_defaults(func=run, cli_parser=p)  # cli_parser: the parser that names the command in errors (`ehrfm sweep plan`)
    return p


def non_negative_number(text: str) -> float:
    """An argparse type: a finite number >= 0, e.g. an epoch limit where 0 means none (ArgumentTypeError otherwise)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number like 1 or 0.5 (got {text!r})") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (got {text!r})")
    return value


def positive_number(text: str) -> float:
    """An argparse type: a finite number > 0, e.g. a FLOP budget "1e18" (ArgumentTypeError otherwise)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number like 1e18 (got {text!r})") from None
    if not (value > 0 and math.isfinite(value)):  # inf: no budget, token count or epoch limit is infinite
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 (got {text!r})")
    return value


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """{name: subparser} of a parser's subcommands (empty when it has none)."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update(action.choices)
    return out


def populate_all(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every deferred argument of a parser and of all its subcommands, recursively."""
    if isinstance(parser, Parser):
        parser.populate()
    for sub in subparsers(parser).values():
        populate_all(sub)
    return parser


_DOCS: dict = {}


def field_docs(cls) -> dict[str, str]:
    """{field name: attribute docstring, on one line} of dataclass `cls` and its bases."""
    import ast
    import dataclasses
    import inspect
    import textwrap

    if cls in _DOCS:
        return _DOCS[cls]
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                out[node.target.id] = " ".join(nxt.value.value.split())
    _DOCS[cls] = out
    return out


def field_default(f):
    """A dataclasses.Field's default value (a fresh one for a default_factory); MISSING when it has none."""
    import dataclasses

    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _base_type(hint):
    """The type argparse converts with: int for `int | None`, list for `list[int]`, ..."""
    import types
    import typing

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return origin or hint


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) and abs(x) >= 1e6 else str(x)  # 3e+11, not 300000000000.0


def _show(default) -> str | None:
    import dataclasses

    if default is None or default is False or default is dataclasses.MISSING:
        return None
    if isinstance(default, (list, tuple)):
        return ",".join(_fmt(x) for x in default) if default else None
    if isinstance(default, dict):
        return None
    return _fmt(default)


def add_fields(container, cls, names: list[str], **overrides: dict) -> list[argparse.Action]:
    """Add one argument per field in `names` of dataclass `cls` to a parser or group (in order).

    Args:
        container: an argparse parser, argument group or mutually exclusive group.
        cls: the config dataclass.
        names: the fields to expose, in help order.
        **overrides: per field name, argparse keyword arguments plus `flag`, `convert`, `unset`
            (module docstring).

    Returns:
        The added actions; each carries `config_class` (the dataclass that declares the field: `cls`
        or one of its bases), `config_field`, `unset` and `shown_default`.

    Raises:
        KeyError: a name or override that is not a field of `cls`, or a field without docstring.
    """
    import dataclasses
    import typing

    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = (set(names) | set(overrides)) - set(fields)
    if unknown:
        raise KeyError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    registry = container._defaults.setdefault(DERIVED, {}).setdefault(cls, [])
    actions = []
    for name in names:
        f = fields[name]
        spec = dict(overrides.get(name, {}))
        flag = spec.pop("flag", "--" + name.replace("_", "-"))
        convert = spec.pop("convert", None)
        unset = spec.pop("unset", False)
        default = field_default(f)
        kind = _base_type(hints[name])
        if name not in docs:
            raise KeyError(f"{cls.__name__}.{name} has no docstring (its help)")
        spec["help"] = docs[name].replace("%", "%%")  # one source: the docstring, never an override
        if "choices" not in spec and "choices" in f.metadata:
            spec["choices"] = list(f.metadata["choices"])
        if kind is bool and "action" not in spec:
            spec["action"] = "store_false" if default is True else "store_true"
        if spec.get("action") not in ("store_true", "store_false", "append") and "type" not in spec:
            spec["type"] = kind if kind in (int, float, str) else str
        spec.setdefault("default", None if unset or default is dataclasses.MISSING else default)
        if flag.startswith("-"):
            spec["dest"] = name
            if flag != "--" + name.replace("_", "-") and spec.get("action") is None:
                spec.setdefault("metavar", flag.lstrip("-").replace("-", "_").upper())  # as argparse names it
        elif flag != name:
            raise ValueError(f"positional {flag!r} must be named after its field {name!r}")
        action = container.add_argument(flag, **spec)
        # the class that declares the field (cls or a base): its source holds the field's docstring
        owner = next(k for k in cls.__mro__ if name in vars(k).get("__annotations__", {}))
        action.config_class, action.config_field, action.unset = owner, name, unset
        action.shown_default = None if spec.get("required") or spec.get("action") == "store_false" else _show(default)
        registry.append((name, convert, unset))
        actions.append(action)
    return actions


def values(cls, args: argparse.Namespace, names=None) -> dict:
    """The config field values parsed into `args`, converted.

    {field: value} of the fields of `cls` derived into `args`'s parser (`names`: only those),
    converted; an `unset` option that was not given is left out.
    """
    out = {}
    for name, convert, unset in getattr(args, DERIVED, {}).get(cls, []):
        if names is not None and name not in names:
            continue
        value = getattr(args, name)
        if unset and value is None:
            continue
        out[name] = convert(value) if convert else value
    return out


def build(cls, args: argparse.Namespace, **extra):
    """The dataclass `cls` from the parsed options derived from it, plus `extra` fields."""
    return cls(**{**values(cls, args), **extra})
