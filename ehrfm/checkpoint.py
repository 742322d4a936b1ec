"""Checkpoints of a run: safetensors tensors + JSON, never pickle.

    RUN/checkpoint/
        model.safetensors       model weights (fp32)
        optimizer.safetensors   AdamW state: "<param name>/exp_avg", "<param name>/exp_avg_sq", "<param name>/step"
        rng.safetensors         torch CPU (and CUDA) generator states
        model_config.json       the ModelConfig, so the weights load on their own
        state.json              step, tokens_seen, wall_s, tokenizer fingerprint, ...

The directory is written as a whole under a temporary name and renamed into place
(ehrfm.io.atomic_dir), so a crash while saving leaves the previous checkpoint intact.
`load_model(run_dir)` is what the clinical heads use.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ehrfm.config import ModelConfig
from ehrfm.errors import UserError
from ehrfm.io import atomic_dir, read_json, write_json

CHECKPOINT_DIR = "checkpoint"
FORMAT_VERSION = 1


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


def save_checkpoint(run_dir, model, optimizer, state: dict) -> Path:
    """Write RUN/checkpoint atomically (replacing the previous one). Call on one rank only."""
    cfg: ModelConfig = _unwrap(model).config
    out = Path(run_dir) / CHECKPOINT_DIR
    with atomic_dir(out, overwrite=True) as tmp:
        save_file(_model_tensors(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if optimizer is not None:
            save_file(_optimizer_tensors(model, optimizer), str(tmp / "optimizer.safetensors"))
        save_file(_rng_tensors(), str(tmp / "rng.safetensors"))
        write_json(tmp / "model_config.json", cfg)
        write_json(tmp / "state.json", {"format": FORMAT_VERSION, **state})
    return out


def has_checkpoint(run_dir) -> bool:
    return (Path(run_dir) / CHECKPOINT_DIR / "state.json").is_file()


def read_state(run_dir) -> dict:
    return read_json(Path(run_dir) / CHECKPOINT_DIR / "state.json", "checkpoint state")


def load_training_state(run_dir, model, optimizer, device="cpu") -> dict:
    """Restore weights, AdamW moments and RNG states in place; return state.json."""
    ckpt = Path(run_dir) / CHECKPOINT_DIR
    state = read_state(run_dir)
    core = _unwrap(model)
    weights = load_file(str(ckpt / "model.safetensors"), device=str(device))
    core.load_state_dict(weights, strict=True)
    if optimizer is not None:
        moments = load_file(str(ckpt / "optimizer.safetensors"), device=str(device))
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
    rng = load_file(str(ckpt / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    cuda_states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    return state


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """(GPT in eval mode, ModelConfig) from a run dir (or its checkpoint/ dir). Safetensors only."""
    from ehrfm.model import GPT

    run_dir = Path(run_dir)
    ckpt = run_dir if (run_dir / "model.safetensors").is_file() else run_dir / CHECKPOINT_DIR
    if not (ckpt / "model.safetensors").is_file():
        raise UserError(f"{run_dir} has no model checkpoint ({CHECKPOINT_DIR}/model.safetensors not found)")
    cfg = ModelConfig.from_dict(read_json(ckpt / "model_config.json", "model config"))
    model = GPT(cfg)
    model.load_state_dict(load_file(str(ckpt / "model.safetensors"), device="cpu"), strict=True)
    return model.to(device).eval(), cfg
