"""The `ehrfm` command line.

Each stage owns its subcommands in a small `cli` module with a `register(subparsers)` function;
those modules import only argparse at top level so that `ehrfm --help` stays instant, and each
subcommand is a thin wrapper over a public Python function of its stage. A subcommand whose options
mirror a config dataclass derives them from it (ehrfm.cli_args) when it is first parsed or asked for
its help, so that only its own config module is imported.
User errors (ehrfm.errors.UserError) and OS errors (a full disk, a read-only filesystem, an --out
at or under a regular file) exit with status 2 and one line on stderr naming the path and the
errno's meaning. SIGTERM (what SLURM and `timeout` send) unwinds like Ctrl-C, so every atomic
output's temporary is removed; `ehrfm train` installs its own checkpoint-and-exit handler.
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import sys
import threading

from ehrfm import __version__
from ehrfm.cli_args import Parser
from ehrfm.errors import Terminated, UserError
from ehrfm.io import check_output_given, error_line, keep_sigint_ignored

# Order here is the order of `ehrfm --help`: the pipeline, stage by stage.
COMMAND_MODULES = [
    "tokenization.cli",  # synth, etl, tokenize
    "ehrfm.train_cli",  # train
    "sweeps.cli",  # sweep plan|launch|status|collect
    "analysis.cli",  # fit, recommend
    "ehrfm.clinical.cli",  # labels, audit, probe, finetune, zeroshot, baseline
    "ehrfm.export_cli",  # export
    "ehrfm.app.demo_cli",  # demo
]


def build_parser() -> Parser:
    """The `ehrfm` argument parser with every subcommand registered (arguments added on first use)."""
    parser = Parser(
        prog="ehrfm",
        description="EHR foundation models and their scaling laws, from raw MIMIC-IV to fitted laws and clinical heads.",
    )
    parser.add_argument("--version", action="version", version=f"ehrfm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


_MAIN_PID = os.getpid()


_TERMINATED_BY = [signal.SIGTERM]  # the signal that raised Terminated last (SIGTERM or SIGHUP)


def _raise_terminated(signum, frame):
    if os.getpid() != _MAIN_PID:  # a forked child inherited the handler: die as SIGTERM would
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _TERMINATED_BY[0] = signum
    raise Terminated()


# Advice for the errno values a user meets on clusters; others get the errno's meaning alone.
_OS_ERROR_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "write to a writable location",
    errno.ENOTDIR: "the path or one of its parents is a regular file, not a directory",
    errno.EEXIST: "the path exists (as a file where a directory was expected?)",
    errno.EACCES: "check the permissions",
}


def os_error_line(e: OSError) -> str:
    """One line for an OSError: the path(s) and the errno's meaning (never file contents)."""
    path = e.filename if e.filename is not None else None
    if e.errno is not None:
        reason = f"{os.strerror(e.errno)} ({errno.errorcode.get(e.errno, e.errno)})"
        hint = _OS_ERROR_HINTS.get(e.errno)
        if hint:
            reason += f"; {hint}"
    else:
        reason = (str(e.strerror or "") or str(e) or type(e).__name__).splitlines()[0]
    if path is None:
        return reason
    if e.filename2 is not None:
        return f"{path} -> {e.filename2}: {reason}"
    return f"{path}: {reason}"


def main(argv: list[str] | None = None) -> int:
    """Run the `ehrfm` command line and return its exit code.

    UserError and OSError print one line to stderr and return 2; SIGTERM returns 128 + 15 and SIGHUP
    128 + 1 (each after the same cleanup as Ctrl-C; SIGHUP only where it is not ignored, as under nohup);
    Ctrl-C returns 130; no subcommand prints the help and returns 2.

    Args:
        argv: arguments without the program name (default: sys.argv[1:]).

    Returns:
        The process exit code.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command_parser = getattr(args, "cli_parser", None) or parser
    if extra:  # the command's own help and nearest flag, not the top-level usage
        command_parser.unrecognized(extra)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    name = command_parser.prog if command_parser is not parser else f"ehrfm {args.command}"
    global _MAIN_PID
    old_handlers = {}
    keep_sigint_ignored()
    if threading.current_thread() is threading.main_thread():
        _MAIN_PID = os.getpid()
        old_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_terminated)
        # A closed terminal or a dropped ssh session (SIGHUP) cleans up as SIGTERM does, instead of dying
        # with its temporaries; a command started under nohup (SIGHUP ignored) keeps ignoring it.
        if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:
            old_handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, _raise_terminated)
    try:
        for action in command_parser._actions:  # every --out: empty, or the working directory (check_output_given)
            if "--out" in action.option_strings:
                check_output_given(getattr(args, action.dest, None))
        rc = args.func(args)
    except UserError as e:
        print(error_line(f"{name}: error: {e}"), file=sys.stderr)
        return 2
    except Terminated:
        by = signal.Signals(_TERMINATED_BY[0])
        print(f"{name}: terminated ({by.name})", file=sys.stderr)
        return 128 + by
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(0)
    except OSError as e:
        print(error_line(f"{name}: error: {os_error_line(e)}"), file=sys.stderr)
        return 2
    finally:
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
