"""The CLI's contract: DESIGN.md's flags exist, options derived from config dataclasses keep the
dataclass's default and docstring, and every subcommand's flag set is frozen in a snapshot.

After a deliberate change of the CLI (a new flag, a new subcommand), regenerate the snapshot:
    python tests/test_cli_contract.py > tests/cli_snapshot.json
and list the change in DESIGN.md when it is part of the contract.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ehrfm.app.cli import build_parser
from ehrfm.cli_args import build, field_default, populate_all, subparsers

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).with_name("cli_snapshot.json")


def _cli_block(name: str) -> str:
    """The code block of the "CLI at a glance" section of README.md (in the repository) or of
    DESIGN.md (kept beside it, ../shared/DESIGN.md)."""
    for p in (ROOT / name, ROOT.parent / "shared" / name):
        if p.exists():
            text = p.read_text()
            section = text[text.index("## The CLI at a glance"):]
            block = section[section.index("```") + 3:]
            return block[:block.index("```")]
    pytest.skip(f"{name} not found beside the repository")


def _commands(parser, path=()):
    """{('sweep', 'plan'): parser, ('train',): parser, ...} of every subcommand, arguments added."""
    out = {}
    for name, sub in subparsers(parser).items():
        out[path + (name,)] = sub
        out.update(_commands(sub, path + (name,)))
    return out


@pytest.fixture(scope="module")
def commands():
    return _commands(populate_all(build_parser()))


def _kind(action) -> str:
    return {"StoreAction": "value", "StoreTrueAction": "store_true", "StoreFalseAction": "store_false",
            "AppendAction": "append", "VersionAction": "version"}.get(type(action).__name__.strip("_"), type(action).__name__)


def snapshot(commands) -> dict[str, list[str]]:
    """{'sweep plan': ['--tokens value required', ...]}: flag (or positional), kind, required,
    choices and mutually exclusive group of every argument, in help order."""
    out = {}
    for path, parser in commands.items():
        groups = {id(a): g for g in parser._mutually_exclusive_groups for a in g._group_actions}
        lines = []
        for a in parser._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            bits = ["/".join(a.option_strings) or str(a.metavar or a.dest), _kind(a)]
            if a.required:
                bits.append("required")
            if a.choices:
                bits.append("choices=" + ",".join(map(str, a.choices)))
            if id(a) in groups:
                bits.append("exclusive" + ("-required" if groups[id(a)].required else ""))
            lines.append(" ".join(bits))
        out[" ".join(path)] = lines
    return out


def _derived(commands):
    """(command, action) for every argument derived from a config dataclass field."""
    return [(" ".join(path), a) for path, p in commands.items() for a in p._actions if hasattr(a, "config_field")]


def _docstrings(cls) -> dict[str, str]:
    """Attribute docstrings of a dataclass, read here independently of ehrfm.cli_args."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {a.target.id: " ".join(b.value.value.split()) for a, b in zip(body, body[1:], strict=False)
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)}


@pytest.mark.parametrize("doc", ["DESIGN.md", "README.md"])
def test_every_flag_listed_in_the_docs_exists(commands, doc):
    lines = []  # one per command; indented lines continue the one before
    for line in _cli_block(doc).strip().splitlines():
        if line.startswith("ehrfm "):
            lines.append(line)
        else:
            lines[-1] += " " + line
    checked = 0
    for line in lines:
        words = line.split()
        for name in words[1].split("|"):
            path = (name,)
            if len(words) > 2 and path + (words[2],) in commands:
                path += (words[2],)
            assert path in commands, f"{doc} lists `ehrfm {' '.join(path)}`, which the CLI lacks"
            flags = {s for a in commands[path]._actions for s in a.option_strings}
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line):
                assert flag in flags, f"{doc} lists `ehrfm {' '.join(path)} {flag}`, which the CLI lacks"
                checked += 1
    assert checked >= 25  # the block was parsed, not skipped


def test_derived_defaults_equal_dataclass_defaults(commands):
    derived = _derived(commands)
    assert len(derived) >= 100
    for cmd, a in derived:
        f = next(f for f in dataclasses.fields(a.config_class) if f.name == a.config_field)
        default = field_default(f)
        if a.unset:  # not given: the dataclass default applies (checked by building below)
            assert a.default is None, (cmd, a.option_strings)
        elif default is not dataclasses.MISSING:
            assert a.default == default, (cmd, a.option_strings, a.default, default)


def test_derived_help_is_the_field_docstring(commands):
    for cmd, a in _derived(commands):
        doc = _docstrings(a.config_class).get(a.config_field)
        assert doc, f"{a.config_class.__name__}.{a.config_field} has no docstring ({cmd})"
        assert a.help == doc.replace("%", "%%"), (cmd, a.option_strings)


def test_built_configs_equal_the_dataclass_defaults():
    """Parsing only the required options gives exactly the dataclass's own config."""
    from analysis.fit import FitConfig
    from ehrfm.app.demo import DemoConfig
    from ehrfm.clinical.finetune import FinetuneConfig
    from ehrfm.clinical.zeroshot import ZeroShotConfig
    from ehrfm.config import TrainConfig
    from sweeps.launch import LaunchConfig

    parser = build_parser()
    args = parser.parse_args(["train", "TOK", "--out", "RUN", "--n-layer", "3", "--d-model", "32", "--n-head", "2",
                              "--tokens", "2e6"])
    assert build(TrainConfig, args) == TrainConfig(tokens_dir="TOK", out_dir="RUN", n_layer=3, d_model=32, n_head=2,
                                                   tokens=2_000_000)
    assert isinstance(build(TrainConfig, args).tokens, int)
    args = parser.parse_args(["train", "T", "--out", "R", "--n-layer", "1", "--d-model", "8", "--n-head", "2",
                              "--flops", "1e12", "--schedule", "wsd", "--stable-checkpoints", "2e3,1000", "--trunk", "X"])
    cfg = build(TrainConfig, args)
    assert (cfg.flops, cfg.tokens, cfg.stable_checkpoints, cfg.trunk_dir) == (1e12, None, [1000, 2000], "X")

    assert build(LaunchConfig, parser.parse_args(["sweep", "launch", "S", "--executor", "local"])) == LaunchConfig()
    args = parser.parse_args(["sweep", "launch", "S", "--executor", "slurm", "--slurm-arg", "mail-type=END",
                              "--slurm-arg", "exclusive", "--setup", "module load cuda"])
    cfg = build(LaunchConfig, args)
    assert (cfg.slurm_args, cfg.setup) == ({"mail-type": "END", "exclusive": True}, ["module load cuda"])

    assert build(FitConfig, parser.parse_args(["fit", "R", "--out", "F"])) == FitConfig()
    cfg = build(FitConfig, parser.parse_args(["fit", "R", "--out", "F", "--keep-exterior", "--approach", "3,2"]))
    assert (cfg.require_interior, cfg.approaches) == (False, (2, 3))

    cfg = build(FinetuneConfig, parser.parse_args(["finetune", "RUN", "--tokens", "T", "--labels", "L", "--out", "O",
                                                   "--epochs", "4"]))
    assert cfg == FinetuneConfig(run_dir="RUN", tokens_dir="T", labels="L", max_epochs=4)
    cfg = build(ZeroShotConfig, parser.parse_args(["zeroshot", "RUN", "--tokens", "T", "--labels", "L", "--out", "O",
                                                   "--task", "icu_admission", "--samples", "7"]))
    assert cfg == ZeroShotConfig(run_dir="RUN", tokens_dir="T", labels="L", task="icu_admission", n_samples=7)

    from ehrfm.cli_args import values

    assert DemoConfig(**values(DemoConfig, parser.parse_args(["demo"]))) == DemoConfig()
    given = values(DemoConfig, parser.parse_args(["demo", "--quick", "--partition", "gpu", "--budgets", "1e11,2e11"]))
    assert given == {"out": "demo_out", "quick": True, "slurm_partition": "gpu", "budgets": [1e11, 2e11]}


def test_sweep_plan_train_options_are_only_those_given():
    from ehrfm.cli_args import values
    from ehrfm.config import TrainConfig
    from sweeps.plan import SweepConfig

    base = ["sweep", "plan", "--tokens", "TOK", "--budgets", "1e12,3e11", "--out", "S"]
    args = build_parser().parse_args(base)
    assert values(TrainConfig, args) == {}
    opts = values(SweepConfig, args)
    assert opts.pop("budgets") == [3e11, 1e12]
    assert SweepConfig(budgets=[], **opts) == SweepConfig(tokens_dir="TOK", budgets=[])
    args = build_parser().parse_args(base + ["--lr", "3e-4", "--decay-shape", "1-sqrt"])
    assert values(TrainConfig, args) == {"lr": 3e-4, "decay_shape": "1-sqrt"}


def test_flag_snapshot(commands):
    assert snapshot(commands) == json.loads(SNAPSHOT.read_text()), (
        "the CLI's flags changed; if deliberate, regenerate tests/cli_snapshot.json (see the module docstring)")


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["sweep", "plan", "--help"], ["sweep", "launch", "--help"],
                                  ["demo", "--help"], ["fit", "--help"], ["labels", "--help"], ["probe", "--help"],
                                  ["finetune", "--help"], ["zeroshot", "--help"], ["baseline", "--help"]])
def test_help_imports_no_stage(argv):
    """`ehrfm --help` and each derived subcommand's help stay fast: they import only light config
    modules, never torch, numpy, polars, pyarrow or scipy."""
    code = ("import sys\nfrom ehrfm.app.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'polars', 'pyarrow', 'scipy') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, check=True)
    assert "HEAVY []" in out.stdout, out.stdout[-500:]


if __name__ == "__main__":
    print(json.dumps(snapshot(_commands(populate_all(build_parser()))), indent=1))
