"""A trained run outside ehrfm: `load_model(RUN)` and a Hugging Face Llama export.

    model = ehrfm.load_model("run")              # torch module, eval mode, fp32, CPU
    logits = model(ids)                          # (B, T) int64 token ids -> (B, T, V) float32
    export_hf("run", "hf_dir")                   # `ehrfm export RUN --out hf_dir`
    AutoModelForCausalLM.from_pretrained("hf_dir")(ids).logits   # the same logits (fp32, CPU, 1e-4)
    hf(ids, position_ids=segment_positions(seg), use_cache=False).logits   # packed rows (segment ids seg)

Packed rows (several subjects per row, ehrfm's training layout): transformers (>= 4.54) builds the
block-diagonal causal mask from position_ids that restart at 0 per segment (ehrfm.model.
segment_positions), but only without a cache: pass use_cache=False (the exported config enables
the cache for generation), else every position attends across subjects.

The export directory is what Hugging Face tools (transformers, vLLM, SGLang) expect of a
`LlamaForCausalLM`: config.json (with the run's provenance under "ehrfm": run dir, status, step
of steps; `ehrfm.results.run_provenance`), model.safetensors (fp32), generation_config.json, and a fast
tokenizer (tokenizer.json, tokenizer_config.json, special_tokens_map.json) whose vocabulary is
the run's event vocabulary (token id = ehrfm token id) with PAD / UNK / TIMELINE_START /
TIMELINE_END as pad / unk / bos / eos. Event strings are joined with single spaces when encoded
as text; token ids are the exact interface.

Why this is a plain renaming of tensors (ehrfm.model is Llama's architecture, DESIGN.md section 3):
- RoPE: ehrfm rotates in the "rotate half" (half-split) layout with positions restarting at 0,
  as HF Llama does, so q/k weights are copied without the interleaved->half permutation that
  Meta-format checkpoints need (transformers' convert_llama_weights_to_hf.py `permute`).
- attn.qkv (3 d, d) holds q, k, v row blocks, heads contiguous inside each: q_proj/k_proj/v_proj.
- mlp.w13 (2 h, d) holds gate (w1) then up (w3): gate_proj/up_proj; w2 is down_proj.
- RMSNorm eps is ModelConfig.norm_eps (rms_norm_eps); the head is untied (tie_word_embeddings
  false); no biases; full multi-head attention (num_key_value_heads = num_attention_heads).

A run whose architecture Llama cannot express (a model config field or a checkpoint tensor that
has no Llama counterpart, e.g. a GELU MLP, a tied head, biases) is refused with a UserError
naming the field or tensor; nothing is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ehrfm.errors import UserError

# ModelConfig fields and what Llama does with them; init_std only matters before training.
LLAMA_FIELDS = {"n_layer", "d_model", "n_head", "context", "vocab_size", "mlp_hidden", "rope_theta", "norm_eps", "init_std"}
# Fields some ehrfm configs may carry, with the only value Llama can express.
LLAMA_FIXED = {
    "activation": ("silu", "swiglu"),
    "mlp": ("swiglu",),
    "norm": ("rmsnorm",),
    "position": ("rope",),
    "tie_embeddings": (False,),
    "tied_head": (False,),
    "bias": (False,),
}
SPECIAL = {"pad_token": "PAD", "unk_token": "UNK", "bos_token": "TIMELINE_START", "eos_token": "TIMELINE_END"}


class CausalLM(torch.nn.Module):
    """An ehrfm GPT whose call returns logits only, as users of a causal LM expect.

    Attributes:
        gpt: the ehrfm.model.GPT (hidden_states, generate, forward_step ... stay available).
        config: its ModelConfig.
    """

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt
        self.config = gpt.config

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab_size), float32 on CPU, of ids (B, T) int64 token ids, T <= context.

        Raises:
            ValueError: ids not (B, T) integers, or ids outside [0, vocab_size) (counted): the
                embedding lookup's own error ("index out of range in self") names neither.
        """
        if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"ids must be (B, T) integer token ids; got shape {tuple(ids.shape)} dtype {ids.dtype}")
        vocab = self.config.vocab_size
        outside = int(((ids < 0) | (ids >= vocab)).sum())
        if outside:  # e.g. ids of another tokenizer, or text offsets instead of token ids
            raise ValueError(f"{outside} of {ids.numel()} token ids are outside the vocabulary [0, {vocab}) of this model")
        return self.gpt(ids)[0]

    def generate(self, *args, **kwargs) -> torch.Tensor:
        """ehrfm.model.GPT.generate (KV-cached sampling)."""
        return self.gpt.generate(*args, **kwargs)


def load_model(run: str | os.PathLike, device: str | torch.device = "cpu", allow_incomplete: bool = False) -> CausalLM:
    """The trained model of a run dir (or its checkpoint/ dir), in eval mode.

    Args:
        run: a run dir written by `ehrfm train` (RUN/checkpoint/model.safetensors).
        device: torch device to load onto.
        allow_incomplete: load the last checkpoint of a run that did not complete.

    Returns:
        CausalLM: `model(ids)` maps (B, T) int64 ids to (B, T, V) logits; `model.gpt` is the GPT.

    Raises:
        UserError: the run has no checkpoint, or did not complete (results.require_completed).
    """
    from ehrfm.checkpoint import load_model as load_checkpoint

    run = Path(run)
    _require_usable(run, allow_incomplete)
    gpt, _ = load_checkpoint(run, device)
    return CausalLM(gpt).eval()


def _require_usable(run: Path, allow_incomplete: bool = False) -> None:
    from ehrfm.results import require_completed

    require_completed(run, "loading its model", allow_incomplete)


def _checkpoint_dir(run: Path) -> Path:
    from ehrfm.checkpoint import CHECKPOINT_DIR

    ckpt = run if (run / "model.safetensors").is_file() else run / CHECKPOINT_DIR
    if not (ckpt / "model.safetensors").is_file() or not (ckpt / "model_config.json").is_file():
        raise UserError(f"{run} has no model checkpoint ({CHECKPOINT_DIR}/model.safetensors and model_config.json)")
    return ckpt


def hf_llama(cfg) -> torch.nn.Module:
    """A fresh Hugging Face LlamaForCausalLM shaped like an ehrfm model.

    A freshly initialised Hugging Face `LlamaForCausalLM` of the same shape as an ehrfm model
    (ModelConfig `cfg`: same width, depth, heads, SwiGLU width, RMSNorm eps, RoPE theta, untied
    head; SDPA attention). For side-by-side benchmarks (benchmarks/train_throughput.py,
    scripts/gpu_check.py); `export_hf` converts trained weights. Needs `transformers`.
    """
    import transformers

    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
        max_position_embeddings=cfg.context, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, attn_implementation="sdpa",
    )
    return transformers.LlamaForCausalLM(hf_cfg)


def training_step(model, kind: str, idx, targets, seg, autocast):
    """A closure that runs one training step of `model` on a fixed batch.

    The step: forward, cross-entropy, backward, AdamW (lr 1e-4). For the side-by-side benchmarks
    of `hf_llama`.

    Args:
        model: an ehrfm GPT (kind "ours": its fused head + loss, `return_logits=False`, as
            ehrfm.train runs) or a Hugging Face causal LM (kind "hf": logits, then F.cross_entropy).
        kind: "ours" or "hf", as above.
        idx: (B, T) int64 token ids.
        targets: (B, T) int64 next-token targets (-100: not scored).
        seg: (B, T) subject ids of packed rows (block-diagonal attention), or None; GPT only.
        autocast: a zero-argument context manager factory (bf16 autocast, or a null context).
    """
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=idx.is_cuda or None)

    def step():
        with autocast():
            if kind == "hf":
                logits = model(input_ids=idx).logits
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100)
            else:
                _, loss = model(idx, targets, segment_ids=seg, return_logits=False)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed(step, device: torch.device) -> float:
    """Seconds one call of `step` takes, the GPU synchronised before and after."""
    import time

    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def llama_config(model_cfg: dict, special_ids: dict[str, int]) -> dict:
    """HF LlamaConfig fields (config.json) for an ehrfm ModelConfig dict; refuses what Llama cannot express.

    Raises:
        UserError: a field outside LLAMA_FIELDS, or a LLAMA_FIXED field with another value.
    """
    for key, value in model_cfg.items():
        if key in LLAMA_FIELDS:
            continue
        allowed = LLAMA_FIXED.get(key)
        if allowed is None or (value if not isinstance(value, str) else value.lower()) not in allowed:
            raise UserError(
                f"cannot export to Llama: model config field {key}={value!r} has no LlamaForCausalLM equivalent"
                + (f" (Llama needs {allowed[0]!r})" if allowed else "")
            )
    d, h = int(model_cfg["d_model"]), int(model_cfg["n_head"])
    theta = float(model_cfg.get("rope_theta", 10_000.0))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(model_cfg["vocab_size"]),
        "hidden_size": d,
        "intermediate_size": int(model_cfg["mlp_hidden"]),
        "num_hidden_layers": int(model_cfg["n_layer"]),
        "num_attention_heads": h,
        "num_key_value_heads": h,
        "head_dim": d // h,
        "hidden_act": "silu",
        "max_position_embeddings": int(model_cfg["context"]),
        "rms_norm_eps": float(model_cfg.get("norm_eps", 1e-5)),
        # both spellings: transformers < 4.56 reads rope_theta/rope_scaling, 5.x rope_parameters
        "rope_theta": theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": float(model_cfg.get("init_std", 0.02)),
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": "float32",
        "dtype": "float32",
        "pad_token_id": special_ids.get("pad_token"),
        "bos_token_id": special_ids.get("bos_token"),
        "eos_token_id": special_ids.get("eos_token"),
    }


def llama_state_dict(tensors: dict[str, torch.Tensor], model_cfg: dict) -> dict[str, torch.Tensor]:
    """Rename ehrfm GPT tensors to LlamaForCausalLM tensor names (see the module docstring).

    Raises:
        UserError: a tensor with no Llama counterpart (biases, extra norms ...) or a missing one.
    """
    n_layer, d, hidden = int(model_cfg["n_layer"]), int(model_cfg["d_model"]), int(model_cfg["mlp_hidden"])
    src = dict(tensors)

    def take(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in src:
            raise UserError(f"cannot export to Llama: checkpoint tensor {name} is missing")
        t = src.pop(name)
        if tuple(t.shape) != shape:
            raise UserError(f"cannot export to Llama: checkpoint tensor {name} has shape {tuple(t.shape)}, expected {shape}")
        return t.to(torch.float32).contiguous()

    out = {"model.embed_tokens.weight": take("embed.weight", (int(model_cfg["vocab_size"]), d))}
    for i in range(n_layer):
        p, q = f"blocks.{i}.", f"model.layers.{i}."
        qw, kw, vw = take(p + "attn.qkv.weight", (3 * d, d)).chunk(3)
        gate, up = take(p + "mlp.w13.weight", (2 * hidden, d)).split(hidden)
        out.update({
            q + "input_layernorm.weight": take(p + "norm1.weight", (d,)),
            q + "self_attn.q_proj.weight": qw.contiguous(),
            q + "self_attn.k_proj.weight": kw.contiguous(),
            q + "self_attn.v_proj.weight": vw.contiguous(),
            q + "self_attn.o_proj.weight": take(p + "attn.proj.weight", (d, d)),
            q + "post_attention_layernorm.weight": take(p + "norm2.weight", (d,)),
            q + "mlp.gate_proj.weight": gate.contiguous(),
            q + "mlp.up_proj.weight": up.contiguous(),
            q + "mlp.down_proj.weight": take(p + "mlp.w2.weight", (d, hidden)),
        })
    out["model.norm.weight"] = take("norm.weight", (d,))
    out["lm_head.weight"] = take("head.weight", (int(model_cfg["vocab_size"]), d))
    if src:
        raise UserError(f"cannot export to Llama: {len(src)} checkpoint tensor(s) have no Llama counterpart, e.g. {sorted(src)[0]}")
    return out


def _recorded_tokens_dir(run: Path) -> str | None:
    """The token dir RUN/config.json records (RUN or its checkpoint dir given), or None when unknown or unreadable."""
    run_dir = run.parent if (run / "model.safetensors").is_file() else run
    try:
        recorded = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("train", {}).get("tokens_dir")
    except (OSError, ValueError, AttributeError):
        return None  # absent or damaged: _event_vocab names the problem when it reads the vocab
    return recorded if isinstance(recorded, str) and recorded else None


def _event_vocab(run: Path, tokens_dir: str | os.PathLike | None, vocab_size: int, state: dict | None = None) -> list[str]:
    """The run's event vocabulary (index = token id), from its token dir, fingerprint-checked.

    The fingerprint is the run's config.json's, else its checkpoint state's (`state`).
    UserError: a damaged config.json (named), no token dir known, another tokenizer.
    """
    from ehrfm.io import read_json
    from ehrfm.tokens import TokenDir

    run_cfg_path = run / "config.json"
    run_cfg = read_json(run_cfg_path, "run config", expect=dict) if run_cfg_path.is_file() else {}
    if tokens_dir is None:
        tokens_dir = run_cfg.get("train", {}).get("tokens_dir")
        if not tokens_dir:
            raise UserError(f"{run}/config.json names no token dir; pass --tokens TOK (the token dir the run was trained on)")
        # a run dir copied to another machine, or a token dir moved or deleted since training: TokenDir's
        # own message ("run `ehrfm tokenize` first") would send the user to re-tokenize
        if not (Path(tokens_dir) / "tokenizer.json").is_file():
            raise UserError(f"{run_cfg_path}: field train.tokens_dir {tokens_dir} holds no tokenizer.json (moved or "
                            "deleted since training?); pass --tokens TOK, the run's token dir where it is now")
    td = TokenDir(tokens_dir)
    recorded = run_cfg.get("tokenizer_fingerprint") or (state or {}).get("tokenizer_fingerprint")
    if recorded and recorded != td.fingerprint:
        raise UserError(f"vocab mismatch: run {run} was trained on tokenizer {recorded[:12]} but {td.path} has {td.fingerprint[:12]}")
    if td.vocab_size != vocab_size:
        raise UserError(f"vocab mismatch: run {run} has vocab size {vocab_size} but {td.path}/tokenizer.json has {td.vocab_size}")
    # a text tokenizer maps each string to one id: a repeated string left an id without a token (len(tok) < V)
    first: dict[str, int] = {}
    for i, token in enumerate(td.vocab):
        if first.setdefault(token, i) != i:
            raise UserError(f"{td.path / 'tokenizer.json'}: field vocab repeats {token!r} (ids {first[token]} and {i}); "
                            "a Hugging Face tokenizer cannot tell them apart (re-create the token dir with `ehrfm tokenize`)")
    return td.vocab


def write_hf_tokenizer(vocab: list[str], out: Path, context: int | None = None) -> dict[str, int]:
    """Write a fast WordLevel tokenizer (tokenizer.json + configs) over `vocab`; returns special ids.

    `context`: the model's context (tokens); `tok(text, truncation=True)` then keeps a timeline's
    last `context` tokens, the history ehrfm's heads feed the model (the most recent events), never
    positions the model was not trained on. Uses the `tokenizers` library (the `hf` extra).
    """
    try:
        from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    except ImportError:
        raise UserError("export needs the `tokenizers` package: pip install 'ehrfm[hf]'") from None
    ids = {tok: i for i, tok in enumerate(vocab)}
    special = {k: ids[v] for k, v in SPECIAL.items() if v in ids}
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token=SPECIAL["unk_token"] if "unk_token" in special else None))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    names = [SPECIAL[k] for k in special]
    tok.add_special_tokens([AddedToken(t, single_word=True, normalized=False, special=True) for t in names])
    # Event strings with spaces ("LAB//50818//mm Hg") or holding a special token ("AGE//UNK") would be
    # split or cut by the pre-tokenizer / special-token matching; as added tokens they match whole
    # (leftmost-longest), so the space-joined text of a timeline encodes back to its ids.
    whole = [t for t in vocab if t not in names and (any(c.isspace() for c in t) or any(n in t for n in names))]
    tok.add_tokens([AddedToken(t, single_word=True, normalized=False) for t in whole])
    tok.save(str(out / "tokenizer.json"))
    names = {k: SPECIAL[k] for k in special}
    (out / "special_tokens_map.json").write_text(json.dumps(names, indent=2), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        # was 2**30: truncation=True kept whole timelines, longer than any position the model was trained on
        "model_max_length": int(context) if context else 1 << 30,
        "truncation_side": "left",  # the most recent events, as ehrfm.clinical.histories.history_window
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        **names,
    }, indent=2), encoding="utf-8")
    return special


def export_hf(run: str | os.PathLike, out: str | os.PathLike, tokens_dir: str | os.PathLike | None = None,
              overwrite: bool = False, allow_incomplete: bool = False) -> Path:
    """Write RUN's model as a Hugging Face LlamaForCausalLM directory (module docstring).

    Args:
        run: a completed run dir (or its checkpoint/ dir).
        out: directory to create (atomically: written under a temporary name, then renamed).
        tokens_dir: the token dir the run was trained on; default: the one in RUN/config.json.
        overwrite: replace an existing `out` (an ehrfm output only: ehrfm.io.check_overwrite).
        allow_incomplete: export the last checkpoint of a run that did not complete.

    Returns:
        Path of the written directory.

    Raises:
        UserError: no checkpoint, a run that did not complete (interrupted, failed, diverged)
        without allow_incomplete, a tokenizer that is not the run's, an architecture Llama cannot
        express, or `out` exists without overwrite, is or holds an input, or is not ehrfm's.
    """
    from safetensors.torch import save_file

    from ehrfm.checkpoint import load_verified_weights
    from ehrfm.io import atomic_dir, check_overwrite, read_json, write_json
    from ehrfm.results import run_provenance

    run = Path(run)
    # the token dir is an input even when it is not given: `--out TOK --overwrite` (TOK the token dir
    # recorded in RUN/config.json) deleted the run's token dir and put the export in its place
    inputs = (run, tokens_dir if tokens_dir is not None else _recorded_tokens_dir(run))
    check_overwrite(out, overwrite, inputs=inputs, command="export")
    _require_usable(run, allow_incomplete)
    ckpt = _checkpoint_dir(run)
    # every file against its sha256 in state.json, as the heads load it: a damaged checkpoint is never exported
    state, weights = load_verified_weights(ckpt, "exported")
    model_cfg = read_json(ckpt / "model_config.json", "model config")
    if not isinstance(model_cfg, dict):
        raise UserError(f"{ckpt / 'model_config.json'} is not a JSON object")
    llama_config(model_cfg, {})  # refuse before reading the vocab
    tensors = llama_state_dict(weights, model_cfg)
    vocab = _event_vocab(run if ckpt != run else run.parent, tokens_dir, int(model_cfg["vocab_size"]), state)
    with atomic_dir(out, overwrite=overwrite, inputs=inputs, command="export") as tmp:
        special = write_hf_tokenizer(vocab, tmp, context=int(model_cfg["context"]))
        config = llama_config(model_cfg, special)
        config["ehrfm"] = run_provenance(run if ckpt != run else run.parent, state)
        write_json(tmp / "config.json", config)
        write_json(tmp / "generation_config.json", {
            "bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
            "pad_token_id": config["pad_token_id"], "max_length": config["max_position_embeddings"],
        })
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        # safetensors writes 0600 whatever the umask: the directory is for sharing (a lab's model dir, the Hub),
        # and its other files follow the umask, so the weights take their mode (others could read the config, not the model)
        os.chmod(tmp / "model.safetensors", (tmp / "config.json").stat().st_mode & 0o777)
    return Path(out)
