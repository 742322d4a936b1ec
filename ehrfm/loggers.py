"""Experiment logging: each metrics.jsonl line, also to TensorBoard or Weights & Biases.

The trainer opens its metrics log through `metrics_log(run_dir, cfg)`; the object writes the
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

Resume: the trainer truncates metrics.jsonl to the checkpoint's step; TensorBoard is told to
purge events after that step (SummaryWriter purge_step), so the curves read back equal
metrics.jsonl after an interruption too. Metrics are step-level numbers, never patient data.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ehrfm.errors import UserError

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


def _last_step(path: Path) -> int:
    """Largest "step" already in metrics.jsonl (0 if none): later events are from a lost session."""
    last = 0
    if path.is_file():
        for text in path.read_text(encoding="utf-8").splitlines():
            try:
                last = max(last, int(json.loads(text).get("step", 0)))
            except (ValueError, AttributeError):
                continue
    return last


def _scalars(line: dict) -> dict[str, float]:
    return {k: float(v) for k, v in line.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(float(v))}


class _TensorBoard:
    def __init__(self, run_dir: Path, purge_after: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_after + 1 if purge_after else None)

    def log(self, line: dict) -> None:
        for key, value in _scalars(line).items():
            self.writer.add_scalar(key, value, global_step=int(line["step"]))
        self.writer.flush()  # live curves; and a crash loses no logged step (resume purges what it redoes)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class _WandB:
    def __init__(self, run_dir: Path, cfg):
        import wandb

        extra = getattr(cfg, "extra", None) or {}
        sweep = extra.get("sweep")
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            mode="offline", dir=str(run_dir), name=str(extra.get("run_id") or run_dir.name),
            group=Path(sweep).name if sweep else None, config=cfg.to_dict() if hasattr(cfg, "to_dict") else None,
            reinit=True,
        )

    def log(self, line: dict) -> None:
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

    def __init__(self, run_dir: str | os.PathLike, cfg=None):
        run_dir = Path(run_dir)
        path = run_dir / "metrics.jsonl"
        name = logger_for(cfg)
        self.backend = None
        if name == "tensorboard":
            self.backend = _TensorBoard(run_dir, _last_step(path))
        elif name == "wandb":
            self.backend = _WandB(run_dir, cfg)
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, text: str) -> int:
        """Append JSON lines `text` to metrics.jsonl and log each to the backend; returns characters written."""
        n = self.file.write(text)
        if self.backend is not None:
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


def metrics_log(run_dir: str | os.PathLike, cfg=None) -> MetricsLog:
    """Open RUN/metrics.jsonl for appending, with the logger of cfg.extra["logger"] (module docstring)."""
    return MetricsLog(run_dir, cfg)
