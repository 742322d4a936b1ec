"""Experiment logging: each metrics.jsonl line, also to TensorBoard or Weights & Biases.

The trainer opens its metrics log through `metrics_log(run_dir, cfg, resume_step=S)`; the object writes the
JSON lines to RUN/metrics.jsonl exactly as before and hands each parsed line to the backend
chosen by `cfg.extra["logger"]` (`ehrfm train --logger`), else by the environment variable
EHRFM_LOGGER (how a sweep's jobs get it: `EHRFM_LOGGER=tensorboard ehrfm sweep launch ...`):

    none (default)  nothing else: metrics.jsonl only, byte-identical to before
    tensorboard     TensorBoard event files in RUN/ beside metrics.jsonl (torch.utils.tensorboard);
                    one scalar per numeric key (train_loss, val_loss, lr, grad_norm, tokens,
                    tokens_per_s), tag = the metrics.jsonl key, global step = its "step"
    wandb           Weights & Biases in offline mode only (nothing leaves the machine; files
                    under RUN/wandb/, `wandb sync` uploads them later); run name = the sweep's
                    run id (or the run dir name), group = the sweep id (the sweep dir name)

Resume (`metrics_log(..., resume_step=S)`, S = the checkpoint's step): metrics.jsonl is truncated
to step S (`truncate_metrics`: the lines after it will be redone), and each backend ends up holding
each metrics.jsonl line once, as the uninterrupted run's would:
    tensorboard     events an earlier session logged at steps >= S are purged (SummaryWriter
                    purge_step=S) and the kept lines at step S logged again
    wandb           one W&B run id per run dir (RUN/wandb/ehrfm_wandb.json), wandb.init(id=...,
                    resume="allow"); W&B cannot take back what it logged, so a line an earlier
                    session already sent (the redone steps) is not sent again and the steps stay
                    monotone. Offline, each session is one fragment under RUN/wandb/: upload them
                    in order into the one run with `wandb beta sync --id ID RUN/wandb`
A backend that no earlier session of the run used gets every kept line first.
Metrics are step-level numbers, never patient data.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path

from ehrfm.errors import UserError
from ehrfm.io import atomic_file, read_json, write_json

LOGGERS = ("none", "tensorboard", "wandb")


def check_logger(name: str | None) -> str:
    """The logger name, or a UserError naming what is missing (before any training starts)."""
    name = name or "none"
    if name not in LOGGERS:
        raise UserError(f"unknown logger {name!r}; choose one of {', '.join(LOGGERS)}")
    if name == "tensorboard":
        try:
            import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        except ImportError:
            raise UserError("--logger tensorboard needs the tensorboard package: pip install 'ehrfm[tensorboard]'") from None
    if name == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("--logger wandb needs the wandb package: pip install 'ehrfm[wandb]'") from None
    return name


def truncate_metrics(path: Path, last_step: int) -> tuple[list[dict], int, int]:
    """Drop the metrics lines logged after the checkpoint a run resumes from (they will be redone).

    Lines after `last_step`, and at `last_step` the end-of-run line (the final held-out loss,
    the only line without "grad_norm", written by the trainer's _finish; older ehrfm also left out
    its "lr"): a run killed after its final checkpoint but before result.json resumes at its last
    step and writes that line again. A line that is not a JSON object with a step is dropped and
    said on stderr (with its line number, never its text): a last line cut by a hard kill, or a
    line damaged in the middle, after which the lines it used to take with it are now kept.

    Returns:
        (the kept lines, parsed; how many lines the file held before; the largest step it held
        before, 0 for none): what the lost session may already have sent to a backend.
    """
    if not path.is_file():
        if last_step > 0:  # deleted by hand (or lost with a copy): steps 1..last_step were resumed without a word
            from ehrfm.io import warn

            warn(f"{path} is missing: the log of steps 1-{last_step} is lost; the run resumes from its checkpoint and "
                 f"logs from step {last_step + 1}")
        return [], 0, 0
    keep, kept, n_before, step_before, bad = [], [], 0, 0, []
    texts = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, text in enumerate(texts, 1):
        try:
            obj = json.loads(text)
            step = int(obj["step"])
        except (ValueError, KeyError, TypeError, OverflowError):
            if text.strip():
                bad.append(number)
            continue
        n_before, step_before = n_before + 1, max(step_before, step)
        if step < last_step or (step == last_step and "grad_norm" in obj):
            keep.append(text)
            kept.append(obj)
    if bad:
        from ehrfm.io import warn

        numbers = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        what = ("its last line was cut (a hard kill?)" if bad == [len(texts)]
                else f"{len(bad)} line(s) are not metrics lines (line {numbers})")
        last_kept = f", the last at step {kept[-1]['step']}" if kept else ""
        warn(f"{path}: {what}: dropped on resume; {len(keep)} line(s) up to step {last_step} kept{last_kept} (the lines "
             "they cut away are not in the log)")
    with atomic_file(path) as f:
        f.write("".join(k + "\n" for k in keep))
    return kept, n_before, step_before


def _scalars(line: dict) -> dict[str, float]:
    return {k: float(v) for k, v in line.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(float(v))}


class _TensorBoard:
    def __init__(self, run_dir: Path, resume_step: int, kept: list[dict]):
        from torch.utils.tensorboard import SummaryWriter

        earlier = any(run_dir.glob("events.out.tfevents.*"))
        # TensorBoard drops an earlier session's events at steps >= resume_step when it reads the dir;
        # those the kept lines hold at resume_step (or all of them, for a first TensorBoard session) are logged again
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=resume_step if earlier else None)
        for line in kept:
            if not earlier or line["step"] >= resume_step:
                self.log(line)

    def log(self, line: dict) -> None:
        for key, value in _scalars(line).items():
            self.writer.add_scalar(key, value, global_step=int(line["step"]))
        self.writer.flush()  # live curves; and a crash loses no logged step (resume purges what it redoes)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


WANDB_STATE = "ehrfm_wandb.json"  # under RUN/wandb/: the run's W&B id and what its sessions sent


class _WandB:
    """One W&B run per run dir, resumed by id; each metrics.jsonl line sent once, steps monotone."""

    def __init__(self, run_dir: Path, cfg, kept: list[dict], lost_lines: int, lost_step: int):
        import wandb

        state_path = run_dir / "wandb" / WANDB_STATE
        if state_path.is_file():  # an earlier session sent at most the lines metrics.jsonl held (flushed first)
            state = read_json(state_path, "W&B run state", expect=dict)
            state["lines"], state["step"] = max(state["lines"], lost_lines), max(state["step"], lost_step)
        else:  # W&B's first session in this run dir: the kept lines too
            state = {"id": secrets.token_hex(4), "lines": 0, "step": 0}
        write_json(state_path, state)
        self.sent_lines, self.sent_step, self.lines = state["lines"], state["step"], 0
        extra = getattr(cfg, "extra", None) or {}
        sweep = extra.get("sweep")
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            mode="offline", dir=str(run_dir), name=str(extra.get("run_id") or run_dir.name),
            group=Path(sweep).name if sweep else None, config=cfg.to_dict() if hasattr(cfg, "to_dict") else None,
            id=state["id"], resume="allow", reinit=True,
        )
        for line in kept:
            self.log(line)

    def log(self, line: dict) -> None:
        self.lines += 1  # this line's number in metrics.jsonl
        if self.lines <= self.sent_lines or int(line["step"]) < self.sent_step:
            return  # an earlier session of this W&B run sent it (a step redone after its checkpoint)
        self.run.log(_scalars(line), step=int(line["step"]))

    def close(self) -> None:
        self.run.finish()


def logger_for(cfg=None) -> str:
    """The logger a run uses: cfg.extra["logger"], else EHRFM_LOGGER, else none (check_logger'd).

    EHRFM_LOGGER: the logger for runs whose config does not name one (e.g. the runs of a sweep
    launched with EHRFM_LOGGER=tensorboard; local and SLURM jobs inherit the environment). The
    trainer calls this before it writes anything: a bad name, or a backend that is not installed,
    left a run dir holding only config.json.
    """
    named = (getattr(cfg, "extra", None) or {}).get("logger")
    if named or not os.environ.get("EHRFM_LOGGER"):
        return check_logger(named)
    try:
        return check_logger(os.environ["EHRFM_LOGGER"])
    except UserError as e:  # say where the name came from: the user typed no --logger
        raise UserError(f"environment variable EHRFM_LOGGER={os.environ['EHRFM_LOGGER']!r}: {e}") from None


class MetricsLog:
    """File-like (write/flush/close, a context manager) over RUN/metrics.jsonl plus one backend."""

    def __init__(self, run_dir: str | os.PathLike, cfg=None, *, resume_step: int):
        run_dir = Path(run_dir)
        path = run_dir / "metrics.jsonl"
        name = logger_for(cfg)
        kept, lost_lines, lost_step = truncate_metrics(path, resume_step)
        self.backend = None
        if name == "tensorboard":
            self.backend = _TensorBoard(run_dir, resume_step, kept)
        elif name == "wandb":
            self.backend = _WandB(run_dir, cfg, kept, lost_lines, lost_step)
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, text: str) -> int:
        """Append JSON lines `text` to metrics.jsonl and log each to the backend; returns characters written."""
        n = self.file.write(text)
        if self.backend is not None:
            self.file.flush()  # metrics.jsonl before the backend: a resume knows what a lost session may have sent
            for raw in text.splitlines():
                if raw.strip():
                    self.backend.log(json.loads(raw))
        return n

    def flush(self) -> None:
        """Flush metrics.jsonl."""
        self.file.flush()

    def close(self) -> None:
        """Close metrics.jsonl and the backend (idempotent for the backend)."""
        self.file.close()
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def metrics_log(run_dir: str | os.PathLike, cfg=None, *, resume_step: int) -> MetricsLog:
    """RUN/metrics.jsonl truncated to `resume_step` and open for appending, with the logger of cfg.extra["logger"].

    `resume_step`: the step training resumes from (0 for a fresh run); see the module docstring.
    """
    return MetricsLog(run_dir, cfg, resume_step=resume_step)
