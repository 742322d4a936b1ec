"""Checkpoints of a run: safetensors tensors + JSON, never pickle; checksummed, swapped safely.

    RUN/checkpoint/
        model.safetensors       model weights (fp32)
        optimizer.safetensors   AdamW state: "<param name>/exp_avg", "<param name>/exp_avg_sq", "<param name>/step"
        rng.safetensors         torch CPU (and CUDA) generator states
        model_config.json       the ModelConfig, so the weights load on their own
        state.json              step, tokens_seen, wall_s, tokenizer fingerprint, ..., and
                                "files": {name: sha256 hex} of the four files above (written last),
                                "state_sha256": the sha256 of state.json's own other keys (`state_digest`)
    RUN/checkpoint.prev/        the previous checkpoint while a run is in progress (same layout):
                                what a damaged checkpoint falls back to

Saving: the new checkpoint is written whole under `checkpoint.tmp-<pid>-<host>-<random>`, then
the old `checkpoint/` is renamed to `checkpoint.prev/` and the new one renamed into place. A kill -9
anywhere in between leaves at least one complete, checksummed copy: `recover_checkpoint` (run by
`has_checkpoint`, i.e. when training starts) promotes the newest verified one among `checkpoint/`,
a dead process's `checkpoint.tmp-*` and `checkpoint.prev/`, and deletes dead processes' temporaries.
Loading verifies every file's sha256 against state.json, and state.json against its own
"state_sha256": a bit flip, a truncation or a hand-edited step or status is never used;
at start-up the run falls back to the previous good checkpoint, or restarts from step 0, and says
so on stderr. `load_model(run_dir)` (what the clinical heads use) refuses a damaged checkpoint with
one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from ehrfm import fault_points
from ehrfm.config import ModelConfig
from ehrfm.errors import UserError
from ehrfm.io import (
    as_os_error,
    read_json,
    remove_stale_temporaries,
    stale_temporaries,
    temporary_sibling,
    to_jsonable,
    warn,
    write_json,
)
from ehrfm.results import Status

CHECKPOINT_DIR = "checkpoint"
PREVIOUS_DIR = "checkpoint.prev"
FORMAT_VERSION = 2  # 2: state.json carries "files" (sha256 per file); 1 (no checksums) still loads
CHECKSUMMED = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "model_config.json")
STATE_DIGEST = "state_sha256"  # state.json's checksum of its own other keys (checkpoints written before it have none)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DDP / torch.compile wrappers


def _model_tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in _unwrap(model).state_dict().items()}


def _optimizer_tensors(model, optimizer) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in _unwrap(model).named_parameters()}
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                out[f"{names[id(p)]}/{key}"] = t.detach().to("cpu").contiguous()
    return out


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    return out


def state_digest(state: dict) -> str:
    """sha256 hex of a checkpoint state's keys other than STATE_DIGEST, as canonical JSON (sorted keys).

    state.json holds the other files' checksums but none of its own: a step set back by hand (86 ->
    50) resumed 103 more steps on the step-86 weights without a word. Its own digest makes any edit,
    or a state.json copied from another checkpoint, a damaged checkpoint (`verify_checkpoint`).
    """
    # as write_json stores it, so a state as written and as read back have one digest
    body = to_jsonable({k: v for k, v in state.items() if k != STATE_DIGEST})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    """Remove a directory by renaming it to a temporary first (a kill mid-delete leaves a stale temporary)."""
    if not path.exists():
        return
    doomed = temporary_sibling(path)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def save_checkpoint(run_dir, model, optimizer, state: dict) -> Path:
    """Write RUN/checkpoint (the previous one becomes RUN/checkpoint.prev). Call on one rank only.

    Args:
        run_dir: the run dir.
        model: the GPT (or its DDP / compiled wrapper).
        optimizer: its AdamW, or None.
        state: JSON-able training state (step, tokens_seen, wall_s, status, ...); "status":
            "completed" also deletes checkpoint.prev (a finished run is never resumed).

    Returns:
        The checkpoint directory. Never leaves RUN without a complete checkpoint once it had one;
        an OS error (full disk) leaves the previous checkpoint as it was and removes the temporary.
    """
    cfg: ModelConfig = _unwrap(model).config
    run_dir = Path(run_dir)
    out, prev = run_dir / CHECKPOINT_DIR, run_dir / PREVIOUS_DIR
    remove_stale_temporaries(out)  # copies leaked by writers killed earlier
    remove_stale_temporaries(prev)
    tmp = temporary_sibling(out)
    tmp.mkdir(parents=True)
    try:
        save_file(_model_tensors(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if optimizer is not None:
            save_file(_optimizer_tensors(model, optimizer), str(tmp / "optimizer.safetensors"))
        save_file(_rng_tensors(), str(tmp / "rng.safetensors"))
        write_json(tmp / "model_config.json", cfg)
        files = {name: _sha256(tmp / name) for name in CHECKSUMMED if (tmp / name).is_file()}
        for name in files:  # the data must be on disk before state.json declares it complete
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        body = {"format": FORMAT_VERSION, **state, "files": files}
        write_json(tmp / "state.json", {**body, STATE_DIGEST: state_digest(body)})
        _fsync_dir(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        # safetensors says "File too large (os error 27)" with no path: name the checkpoint and the errno
        named = as_os_error(e, out)
        if named is not None and named is not e:
            raise named from e
        raise
    if out.exists():
        _discard(prev)
        os.replace(out, prev)
        # a test can kill the process here, with no checkpoint/ (old one in .prev, new one in .tmp-*)
        fault_points.hold("checkpoint-swap", run_dir.name)
    os.replace(tmp, out)
    _fsync_dir(run_dir)
    if state.get("status") == Status.COMPLETED:
        _discard(prev)
    return out


def check_format(ckpt: str | os.PathLike) -> None:
    """Refuse a checkpoint written by a newer ehrfm (state.json format above FORMAT_VERSION).

    Checked before `recover_checkpoint` judges a checkpoint: its files may be laid out in a way
    this ehrfm cannot verify, and a checkpoint it took for damaged would be discarded. A missing
    or unreadable state.json is left to `verify_checkpoint`.

    Raises:
        UserError: naming the state.json, its format and this ehrfm's.
    """
    path = Path(ckpt) / "state.json"
    try:
        state = read_json(path, "checkpoint state", expect=dict) if path.is_file() else {}
    except UserError:
        return
    fmt = state.get("format")
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT_VERSION:
        from ehrfm import __version__

        raise UserError(
            f"checkpoint state {path} has format {fmt}, written by a newer ehrfm (ehrfm {__version__} reads formats "
            f"up to {FORMAT_VERSION}): resume or load it with that ehrfm; nothing was changed"
        )


def verify_checkpoint(ckpt: str | os.PathLike) -> tuple[dict | None, str | None]:
    """Check one checkpoint directory without loading it into a model.

    Returns:
        (state.json dict, None) when complete, state.json matches its own digest (when it has one)
        and every checksummed file matches its sha256;
        (None, reason) otherwise, the reason naming the damaged or missing file. Checkpoints of
        format 1 (no checksums) are checked only for complete safetensors headers and sizes.
    """
    ckpt = Path(ckpt)
    state_path = ckpt / "state.json"
    if not state_path.is_file():
        return None, f"checkpoint state {state_path} not found (incomplete checkpoint)"
    try:
        state = read_json(state_path, "checkpoint state", expect=dict)
    except UserError as e:
        return None, str(e)
    if not isinstance(state.get("step"), int) or isinstance(state.get("step"), bool):
        return None, f"checkpoint state {state_path} is damaged: no integer step"
    if STATE_DIGEST in state and state[STATE_DIGEST] != state_digest(state):
        return None, (f"checkpoint state {state_path} was changed after it was written (its {STATE_DIGEST} does not "
                      "match its content: edited by hand, or copied from another checkpoint)")
    files = state.get("files")
    if files is not None:
        if not isinstance(files, dict) or "model.safetensors" not in files:
            return None, f"checkpoint state {state_path} is damaged: no checksums"
        for name, digest in files.items():
            path = ckpt / str(name)
            if not path.is_file():
                return None, f"checkpoint file {path} not found (incomplete checkpoint)"
            if _sha256(path) != digest:
                return None, f"checkpoint file {path} is damaged (sha256 differs from the one recorded in state.json)"
        return state, None
    from safetensors import safe_open

    for name in ("model.safetensors", "rng.safetensors"):
        path = ckpt / name
        if not path.is_file():
            return None, f"checkpoint file {path} not found (incomplete checkpoint)"
    for path in sorted(ckpt.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    f.get_slice(key)
        except Exception as e:  # SafetensorError and friends: truncated or overwritten
            return None, f"checkpoint file {path} is damaged ({type(e).__name__})"
    return state, None


def recover_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """Make RUN/checkpoint the newest verified checkpoint there is; return what was done (or None).

    - A damaged checkpoint/ (checksum mismatch, truncated or missing file) is deleted.
    - With no (good) checkpoint/, the newest verified copy among the checkpoint.tmp-* of dead
      processes or other nodes (a kill inside the swap) and checkpoint.prev/ is renamed into place.
    - Those temporaries are then deleted (a live process's on this machine is left alone).
    Each action is reported on stderr and returned; None when the checkpoint was fine or absent.
    """
    run_dir = Path(run_dir)
    out, prev = run_dir / CHECKPOINT_DIR, run_dir / PREVIOUS_DIR
    if not run_dir.is_dir():
        return None
    for ckpt in (out, prev):  # a newer ehrfm's checkpoint is refused, never judged damaged and discarded
        check_format(ckpt)
    remove_stale_temporaries(prev)
    # Only one trainer works in a run dir (it is locked while training), so another node's
    # temporaries are stale too: a SLURM requeue usually lands on another node.
    stale = stale_temporaries(out, other_hosts=True)
    notes = []
    if out.exists():
        state, problem = verify_checkpoint(out)
        if state is None:
            notes.append(f"{problem}: discarded")  # the reason names the file ("checkpoint state ... is damaged")
            _discard(out)
    if not out.exists():
        best, best_step = None, -1
        for cand in [*stale, prev]:
            if cand.is_dir():
                state, _ = verify_checkpoint(cand)
                if state is not None and state["step"] > best_step:
                    best, best_step = cand, state["step"]
        if best is not None:
            os.replace(best, out)
            what = "the previous checkpoint" if best == prev else f"the complete checkpoint left in {best.name}"
            notes.append(f"resuming from {what} (step {best_step})")
        elif notes:
            notes.append("no good earlier checkpoint: restarting the run from step 0")
    for p in stale:
        if p.exists():
            shutil.rmtree(p, ignore_errors=True)
    if not notes:
        return None
    msg = f"{run_dir}: " + "; ".join(notes)
    warn(msg)
    return msg


def has_checkpoint(run_dir) -> bool:
    """True when RUN/checkpoint holds a verified checkpoint, after `recover_checkpoint`.

    Under torch.distributed, rank 0 recovers and the others wait for it (call on every rank).
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if not distributed or dist.get_rank() == 0:
        recover_checkpoint(run_dir)
    if distributed:
        dist.barrier()
    return (Path(run_dir) / CHECKPOINT_DIR / "state.json").is_file()


def read_state(run_dir) -> dict:
    """The run's checkpoint/state.json as a dict.

    Raises:
        UserError: the file is missing, not valid JSON or not an object (ehrfm.io.read_json).
    """
    return read_json(Path(run_dir) / CHECKPOINT_DIR / "state.json", "checkpoint state", expect=dict)


def _load_verified(ckpt: Path, name: str, state: dict, device) -> dict[str, torch.Tensor]:
    """Tensors of one checkpoint file, read once and checked against its recorded sha256."""
    path = ckpt / name
    hint = "rerun the same command: it falls back to the previous checkpoint or restarts the run"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"checkpoint file {path} not found (incomplete checkpoint); {hint}") from None
    digest = (state.get("files") or {}).get(name)
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise UserError(f"checkpoint file {path} is damaged (sha256 differs from state.json); {hint}")
    try:
        tensors = load_bytes(data)
    except Exception as e:  # SafetensorError: truncated or overwritten (format-1 checkpoints)
        raise UserError(f"checkpoint file {path} is damaged ({type(e).__name__}); {hint}") from None
    return {k: v.to(device) for k, v in tensors.items()}


def load_verified_weights(ckpt: str | os.PathLike, use: str = "used") -> tuple[dict, dict[str, torch.Tensor]]:
    """(state.json, model tensors on CPU) of one checkpoint dir, every file checked first.

    For readers that need the raw tensors (export): the same checks as `load_model`.

    Raises:
        UserError: a missing, truncated or bit-flipped file (named), or a state.json that is not
            a checkpoint state; `use` says what was refused ("exported").
    """
    ckpt = Path(ckpt)
    check_format(ckpt)
    state, problem = verify_checkpoint(ckpt)
    if state is None:
        raise UserError(f"checkpoint {ckpt} cannot be {use}: {problem}; retrain the run (ehrfm train ... --overwrite)")
    return state, _load_verified(ckpt, "model.safetensors", state, "cpu")


def load_training_state(run_dir, model, optimizer, device="cpu") -> dict:
    """Restore weights, AdamW moments and RNG states in place; return state.json.

    Every file is checked against its sha256 in state.json before use (UserError naming the file
    otherwise; `has_checkpoint` has normally recovered from such damage already).
    """
    ckpt = Path(run_dir) / CHECKPOINT_DIR
    state = read_state(run_dir)
    core = _unwrap(model)
    weights = _load_verified(ckpt, "model.safetensors", state, str(device))
    core.load_state_dict(weights, strict=True)
    if optimizer is not None:
        moments = _load_verified(ckpt, "optimizer.safetensors", state, str(device))
        params = dict(core.named_parameters())
        order = [id(p) for g in optimizer.param_groups for p in g["params"]]
        index = {pid: i for i, pid in enumerate(order)}
        opt_state: dict[int, dict] = {}
        for key, value in moments.items():
            name, field = key.rsplit("/", 1)
            if name not in params:
                raise UserError(f"checkpoint {ckpt} does not match the model: unknown parameter {name}")
            if field == "step":
                value = value.to("cpu")  # AdamW keeps `step` on CPU unless capturable
            opt_state.setdefault(index[id(params[name])], {})[field] = value
        sd = optimizer.state_dict()
        sd["state"] = opt_state
        optimizer.load_state_dict(sd)
    rng = _load_verified(ckpt, "rng.safetensors", state, "cpu")
    torch.set_rng_state(rng["torch_cpu"])
    cuda_states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    return state


def check_device(device: str | torch.device) -> torch.device:
    """The torch.device of a --device value (cpu, cuda, cuda:N, ...).

    Raises:
        UserError: not a device name, or CUDA (or GPU N) asked for where this machine has none.
    """
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:N)") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} requested but CUDA is not available on this machine "
                            f"(torch {torch.__version__}); use --device cpu")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise UserError(f"--device {device} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return d


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu", with_state: bool = False):
    """(GPT in eval mode, ModelConfig) from a run dir (or its checkpoint/ dir). Safetensors only.

    Args:
        run_dir: a run dir, or a checkpoint dir holding model.safetensors.
        device: where to put the model.
        with_state: also return the checkpoint's verified state.json (step, tokens_seen, status, ...):
            the state of the very weights loaded, which a later read of the file need not be (a run
            still training replaces its checkpoint).

    Returns:
        (GPT in eval mode on `device`, its ModelConfig from model_config.json), and the state dict
        third when `with_state`.

    Raises:
        UserError: no model.safetensors, a checkpoint that fails verification (sha256 in
            state.json) or cannot be read, or a device this machine lacks (check_device).
    """
    from ehrfm.model import GPT

    device = check_device(device)
    run_dir = Path(run_dir)
    ckpt = run_dir if (run_dir / "model.safetensors").is_file() else run_dir / CHECKPOINT_DIR
    if not (ckpt / "model.safetensors").is_file():
        raise UserError(f"{run_dir} has no model checkpoint ({CHECKPOINT_DIR}/model.safetensors not found)")
    check_format(ckpt)
    state, problem = verify_checkpoint(ckpt)
    if state is None:
        raise UserError(f"checkpoint of {run_dir} cannot be used: {problem}; retrain the run (ehrfm train ... --overwrite)")
    cfg = ModelConfig.from_dict(read_json(ckpt / "model_config.json", "model config", expect=dict))
    model = GPT(cfg)
    model.load_state_dict(_load_verified(ckpt, "model.safetensors", state, "cpu"), strict=True)
    if with_state:
        return model.to(device).eval(), cfg, state
    return model.to(device).eval(), cfg
