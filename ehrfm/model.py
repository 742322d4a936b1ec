"""A Llama-style GPT for event-token timelines: RMSNorm, RoPE, SwiGLU, untied head, no biases.

The parameters are exactly those counted by ehrfm.shapes (n_params, n_params_total).

API (used by the trainer and by the clinical heads):

    model = GPT(ModelConfig(...))
    logits, loss = model(idx, targets)                      # (B, T) ids -> (B, T, V), mean loss
    logits, loss = model(idx, targets, segment_ids=seg)     # packed rows: block-diagonal causal
    logits, losses = model(idx, targets, reduction="none")  # per-token losses (B, T), 0 where ignored
    h = model.hidden_states(idx)                            # final-normed (B, T, d_model)
    cache = model.new_cache(batch_size=B)                   # KV cache for incremental decoding
    logits = model.forward_step(prompt, cache)              # prefill: (B, t) -> (B, t, V)
    logits = model.forward_step(next_ids, cache)            # one more token each: (B, 1) -> (B, 1, V)
    logits = model.forward_step(padded, cache, pad=n_pad)   # left-padded rows: n_pad (B,) slots masked
    out = model.generate(prompt, max_new_tokens=64, temperature=1.0, generator=g)

Packing: `segment_ids` (B, T) integers label which sequence (subject window) each position of a
packed row belongs to; positions attend only to earlier positions of the same segment, and RoPE
positions restart at 0 at each segment start, so a subject's logits are the same whether it is
packed with others or alone. Targets equal to -100 are ignored (segment ends, padding).
Attention kernels: on CUDA with xformers installed, memory-efficient attention with a
BlockDiagonalCausalMask over the flattened batch (imported lazily, only on CUDA); elsewhere
torch SDPA, with plain `is_causal` when every row holds a single segment (no mask materialised)
and a boolean (B, 1, T, T) block-diagonal causal mask otherwise. Both give the same loss.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ehrfm.config import ModelConfig

IGNORE_INDEX = -100


# --- attention layout ---------------------------------------------------------------------------


@dataclass
class AttentionLayout:
    """How positions of a batch may attend, computed once per forward and shared by all layers."""

    kind: str  # "causal" | "mask" | "xformers"
    mask: torch.Tensor | None = None  # (B, 1, T, T) bool, True = may attend (kind "mask")
    bias: object = None  # xformers BlockDiagonalCausalMask (kind "xformers")


_XFORMERS = None  # the xformers.ops module once imported, False when unavailable


def _xformers_ops():
    global _XFORMERS
    if _XFORMERS is None:
        try:
            import xformers.ops as xops  # CUDA only; never imported on CPU

            _XFORMERS = xops
        except Exception:  # not installed or broken build: fall back to SDPA
            warnings.warn("xformers is not available; using torch SDPA with a block-diagonal mask", stacklevel=3)
            _XFORMERS = False
    return _XFORMERS


def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """Position of each token inside its segment (restarts at 0 at every segment start)."""
    B, T = segment_ids.shape
    ar = torch.arange(T, device=segment_ids.device).expand(B, T)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    seg_start = torch.where(starts, ar, torch.zeros_like(ar)).cummax(dim=1).values
    return ar - seg_start


def attention_layout(segment_ids: torch.Tensor | None, T: int, device: torch.device, backend: str = "auto") -> AttentionLayout:
    """Pick the cheapest exact kernel for this batch's segment structure.

    Args:
        segment_ids: (B, T) packed-sequence labels, or None (one sequence per row).
        T: sequence length.
        device: where the batch is; xformers is tried only on CUDA.
        backend: "auto", "sdpa" or "xformers".

    Returns:
        AttentionLayout "causal" (one segment per row), "xformers" (a BlockDiagonalCausalMask over
        the flattened batch) or "mask" (a (B, 1, T, T) boolean block-diagonal causal mask).
    """
    if segment_ids is None:
        return AttentionLayout("causal")
    # The one-segment check reads a value back from the device: a sync, and under torch.compile a
    # graph break. A compiled graph skips it and takes the mask, exact for one segment too (its
    # block-diagonal causal mask is the causal mask); callers that know rows are unpacked pass None.
    if not torch.compiler.is_compiling() and bool((segment_ids == segment_ids[:, :1]).all()):
        return AttentionLayout("causal")
    if device.type == "cuda" and backend in ("auto", "xformers") and _xformers_ops():
        xops = _xformers_ops()
        B = segment_ids.shape[0]
        # run lengths of segments, row by row, over the flattened (1, B*T) batch
        row_key = segment_ids.to(torch.int64) + (torch.arange(B, device=device)[:, None] << 32)
        _, counts = torch.unique_consecutive(row_key.flatten(), return_counts=True)
        bias = xops.fmha.attn_bias.BlockDiagonalCausalMask.from_seqlens(counts.tolist())
        return AttentionLayout("xformers", bias=bias)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    return AttentionLayout("mask", mask=(same & causal)[:, None])


# --- loss ---------------------------------------------------------------------------------------


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of (h @ W.T) without keeping logits, log-softmax or a zero-filled grad.

    Forward turns the logits buffer into softmax probabilities in place; backward subtracts the
    one-hot targets from it and multiplies back: one (N, V) buffer instead of three, no extra
    passes. Same math as F.cross_entropy(F.linear(h, W), t, reduction="sum"); used by training.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")  # backward then runs under the forward's autocast (bf16 matmuls)
    def forward(ctx, h, weight, targets):
        """Summed cross-entropy of logits h @ weight.T (nats); saves softmax probabilities for backward.

        Args:
            ctx: the autograd context.
            h: hidden states (N, d_model).
            weight: the output head's weight (V, d_model).
            targets: (N,) int64 token ids; IGNORE_INDEX (-100) positions add nothing.

        Returns:
            A float32 scalar: the summed loss over non-ignored targets, in nats.
        """
        logits = (h @ weight.t()).float()
        valid = targets != IGNORE_INDEX
        safe = torch.where(valid, targets, 0)
        lse = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(1, safe[:, None])[:, 0]
        loss = ((lse - picked) * valid).sum()
        probs = logits.sub_(lse[:, None]).exp_()  # in place: the logits are not needed again
        ctx.save_for_backward(h, weight, probs, safe, valid)
        return loss

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_loss):
        """Gradients of the summed loss with respect to h (N, d_model) and weight (V, d_model); None for targets."""
        h, weight, probs, safe, valid = ctx.saved_tensors
        dlogits = probs
        dlogits[torch.arange(len(safe), device=safe.device), safe] -= 1.0
        dlogits.mul_((grad_loss * valid)[:, None])
        return dlogits @ weight, dlogits.t() @ h, None  # autocast (CUDA) picks the matmul dtype


# --- rotary embeddings --------------------------------------------------------------------------


def rope_cache(context: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables (Su et al. 2021): cos, sin, each (context, head_dim) float32.

    In the 'rotate half' layout of Llama / HF: frequencies theta^(-2i / head_dim), repeated for
    the two halves.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.outer(torch.arange(context, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x by rotary position embeddings (Su et al. 2021, RoFormer), Llama's "rotate half" layout.

    Args:
        x: queries or keys (B, T, H, hd).
        cos: cosine table broadcastable to x: (T, 1, hd) or (B, T, 1, hd) (`rope_cache`).
        sin: sine table, same shape as cos.

    Returns:
        The rotated tensor, same shape and dtype as x.
    """
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


# --- blocks -------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019) with a learned scale and no bias, as in Llama.

    Computed in float32 and cast back to the input dtype.
    """
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x (..., dim) over its last dimension; same shape and dtype as x."""
        # normalise in fp32 (bf16 autocast would otherwise lose precision in the mean square)
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


def per_slice_matmuls(x: torch.Tensor) -> bool:
    """Multiply by each slice of a fused weight (qkv, SwiGLU's gate|up) separately?

    On CPU yes: three (two) contiguous outputs, and RoPE on them, make a training step ~5% faster
    than one strided product (benchmarks/train_throughput.py). On GPUs the small models of a sweep
    are launch-bound, so one fused matmul. Same parameters and the same function either way.
    """
    return x.device.type == "cpu"


class Attention(nn.Module):
    """Causal multi-head self-attention with RoPE and fused qkv projection, no biases."""
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def _qkv(self, x, cos, sin):
        """q, k (rotated), v, each (B, T, H, hd): RoPE in this layout, before any transpose."""
        B, T, C = x.shape
        if per_slice_matmuls(x):
            q, k, v = (F.linear(x, w).view(B, T, self.n_head, self.head_dim) for w in self.qkv.weight.chunk(3))
        else:
            q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x, cos, sin, layout: AttentionLayout):
        """Attend over a batch x (B, T, d_model) -> (B, T, d_model).

        Args:
            x: normed hidden states (B, T, d_model).
            cos: RoPE table broadcastable to (B, T, H, head_dim) ((T, 1, hd) or (B, T, 1, hd)).
            sin: as cos.
            layout: which positions may attend to which (`attention_layout`): causal, a boolean mask, or
                an xformers block-diagonal bias.

        Returns:
            The output projection of the attended values, (B, T, d_model).
        """
        B, T, C = x.shape
        q, k, v = self._qkv(x, cos, sin)
        if layout.kind == "xformers":
            # xformers wants (1, B*T, H, hd): the whole batch as one block-diagonal sequence
            flat = lambda t: t.reshape(1, B * T, self.n_head, self.head_dim)  # noqa: E731  (v may be a strided view)
            y = _xformers_ops().memory_efficient_attention(flat(q), flat(k), flat(v), attn_bias=layout.bias)
            y = y.reshape(B, T, C)
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd) for SDPA
            if layout.kind == "causal":
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask)
            y = y.transpose(1, 2).reshape(B, T, C)
        return self.proj(y)

    def forward_step(self, x, cos, sin, k_cache, v_cache, start: int, mask: torch.Tensor | None = None):
        """Attend new positions [start, start+t) to the cache [0, start+t); writes k, v in the cache.

        mask: optional boolean (B, 1, t, start+t) of the keys each new position may attend to.
        """
        B, t, C = x.shape
        q, k, v = (z.transpose(1, 2) for z in self._qkv(x, cos, sin))  # (B, H, t, hd), the cache's layout
        k_cache[:B, :, start : start + t] = k
        v_cache[:B, :, start : start + t] = v
        keys, values = k_cache[:B, :, : start + t], v_cache[:B, :, : start + t]
        if mask is not None:
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        elif t == 1:
            y = F.scaled_dot_product_attention(q, keys, values)
        else:
            mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, t, C))


class SwiGLU(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020): w2(silu(w1 x) * w3 x), hidden width cfg.mlp_hidden, no biases."""
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.hidden = cfg.mlp_hidden
        self.w13 = nn.Linear(cfg.d_model, 2 * cfg.mlp_hidden, bias=False)  # gate (w1) and up (w3), fused
        self.w2 = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, x):
        """Apply the feed-forward to x (..., d_model) -> (..., d_model)."""
        if per_slice_matmuls(x):
            w1, w3 = self.w13.weight.split(self.hidden)
            gate, up = F.linear(x, w1), F.linear(x, w3)
        else:
            gate, up = self.w13(x).split(self.hidden, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x))."""
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin, layout):
        """Apply the block to x (B, T, d_model) -> (B, T, d_model); cos, sin, layout as for Attention.forward."""
        x = x + self.attn(self.norm1(x), cos, sin, layout)
        return x + self.mlp(self.norm2(x))


# --- the model ----------------------------------------------------------------------------------


class KVCache:
    """Keys and values of every layer for incremental decoding: (n_layer, B, H, max_len, hd) each."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int | None = None, device=None, dtype=torch.float32):
        self.max_len = max_len or cfg.context
        shape = (cfg.n_layer, batch_size, cfg.n_head, self.max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled so far

    def reset(self) -> None:
        """Forget the cached positions (the buffers are kept and overwritten by the next prefill)."""
        self.length = 0


class GPT(nn.Module):
    """Decoder-only transformer; see the module docstring for its API."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)  # untied from self.embed
        cos, sin = rope_cache(cfg.context, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.attention_backend = "auto"  # auto | sdpa | xformers (set by the trainer)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise weights as GPT-2 / nanoGPT: N(0, init_std), residual projections scaled, norms at 1.

        Attention output and SwiGLU w2 weights use std init_std / sqrt(2 n_layer) (Radford et al. 2019);
        one-dimensional parameters (RMSNorm scales) are set to 1.
        """
        # GPT-2 / nanoGPT init: N(0, 0.02); residual output projections scaled by 1/sqrt(2 n_layer)
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                nn.init.ones_(p)
            elif name.endswith(("attn.proj.weight", "mlp.w2.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, 0.0, std)

    def n_params(self, non_embedding: bool = True) -> int:
        """Number of parameters of the model.

        Args:
            non_embedding: leave out the token embedding and the (untied) output head, as the
                non-embedding N of Kaplan et al. (2020) and ehrfm.shapes.n_params.

        Returns:
            The parameter count.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.weight.numel() + self.head.weight.numel()
        return n

    def _rope(self, positions: torch.Tensor):
        # (B, T) positions -> (B, T, 1, hd) cos/sin, broadcast over heads of (B, T, H, hd)
        return self.rope_cos[positions][:, :, None], self.rope_sin[positions][:, :, None]

    def _trunk(self, idx, segment_ids=None, positions=None, streams: list | None = None) -> torch.Tensor:
        B, T = idx.shape
        if self.config.context < T:
            raise ValueError(f"sequence length {T} exceeds the model context {self.config.context}")
        layout = attention_layout(segment_ids, T, idx.device, self.attention_backend)
        if positions is None and layout.kind == "causal":
            cos, sin = self.rope_cos[:T, None], self.rope_sin[:T, None]  # every row starts at 0: no gather
        else:
            cos, sin = self._rope(segment_positions(segment_ids) if positions is None else positions)
        x = self.embed(idx)
        for block in self.blocks:
            if streams is not None:  # the residual stream entering each block (the embeddings first)
                streams.append(x)
            x = block(x, cos, sin, layout)
        return self.norm(x)

    def forward(self, idx, targets=None, segment_ids=None, positions=None, reduction: str = "mean", return_logits: bool = True):
        """Logits and next-token cross-entropy (nats) of token ids idx (B, T).

        Args:
            idx: (B, T) int64 token ids, T <= cfg.context.
            targets: optional (B, T) int64 next-token ids; IGNORE_INDEX (-100) positions are ignored.
            segment_ids: optional (B, T) integers labelling the packed sequence of each position
                (block-diagonal causal attention, RoPE positions restarting per segment).
            positions: optional (B, T) RoPE positions (default: from segment_ids, else 0..T-1).
            reduction: "mean" over non-ignored targets, "sum", or "none" ((B, T), 0 where ignored).
            return_logits: False (with targets, reduction "sum" or "mean"): logits are not kept and
                None is returned for them; the training path (LinearCrossEntropy, less memory traffic).

        Returns:
            (logits (B, T, V) or None, loss): loss is None without targets, else a scalar (mean or
            sum, nats) or (B, T) per-token losses for reduction "none".

        Raises:
            ValueError: T exceeds the model context.
        """
        h = self._trunk(idx, segment_ids, positions)
        if targets is not None and not return_logits and reduction in ("sum", "mean"):
            loss = LinearCrossEntropy.apply(h.reshape(-1, h.size(-1)), self.head.weight, targets.reshape(-1))
            if reduction == "mean":
                loss = loss / (targets != IGNORE_INDEX).sum().clamp_min(1)
            return None, loss
        logits = self.head(h)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction=reduction
        )
        if reduction == "none":
            loss = loss.view(targets.shape)
        return logits, loss

    def hidden_states(self, idx, segment_ids=None, positions=None) -> torch.Tensor:
        """Final-normed hidden states (B, T, d_model) of ids idx (B, T). Rows may be right-padded (causal).

        segment_ids and positions as for `forward`; ValueError when T exceeds the context.
        """
        return self._trunk(idx, segment_ids, positions)

    def layer_states(self, idx, segment_ids=None, positions=None) -> list[torch.Tensor]:
        """Hidden states of every depth: n_layer + 1 tensors (B, T, d_model), as for `hidden_states`.

        The residual stream entering each block (the token embeddings first), RMS-normalised without
        a learned scale so that every depth is on one scale, then the final-normed output
        (`hidden_states`). Probing every layer, not only the last, follows ELMo (Peters et al. 2018)
        and Tenney et al. (2019): earlier layers keep what the last one has traded away.
        """
        streams: list[torch.Tensor] = []
        last = self._trunk(idx, segment_ids, positions, streams=streams)
        return [F.rms_norm(s, (s.shape[-1],), eps=self.config.norm_eps) for s in streams] + [last]

    # --- incremental decoding -------------------------------------------------------------------

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to `max_len` positions (default: the context).

        The cache lives on the model's device in the dtype of its weights.
        """
        p = self.head.weight
        return KVCache(self.config, batch_size, max_len, device=p.device, dtype=p.dtype)

    def forward_step(self, idx, cache: KVCache, start_pos: int | None = None, pad: torch.Tensor | None = None,
                     last_only: bool = False) -> torch.Tensor:
        """Logits (B, t, V) of new tokens idx (B, t) at positions [start_pos, start_pos+t).

        start_pos defaults to cache.length; the cache then holds start_pos + t positions.
        The same rows (a batch of unpacked sequences) must be fed at every step.
        pad: optional (B,) int, how many leading cache slots of each row are left padding: no
        position attends to them (a padding position attends to itself only). RoPE scores depend
        on relative positions only, so a left-padded row gives the logits it would give alone.
        last_only: the logits (B, 1, V) of the last position alone; a prefill that samples from
        its end needs no more, and (B, t, V) of a long prompt and a large vocabulary can exceed
        the KV cache many times over.
        """
        start = cache.length if start_pos is None else int(start_pos)
        B, t = idx.shape
        if start + t > min(cache.max_len, self.config.context):
            raise ValueError(f"KV cache full: {start + t} positions > {min(cache.max_len, self.config.context)}")
        pos = torch.arange(start, start + t, device=idx.device)
        cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]
        mask = None
        if pad is not None:
            keys = torch.arange(start + t, device=idx.device)
            mask = (keys[None, None, :] <= pos[None, :, None]) & (keys[None, None, :] >= pad.to(idx.device)[:, None, None])
            mask = (mask | (keys[None, None, :] == pos[None, :, None]))[:, None]  # (B, 1, t, start+t)
        x = self.embed(idx)
        for i, block in enumerate(self.blocks):
            x = x + block.attn.forward_step(block.norm1(x), cos, sin, cache.k[i], cache.v[i], start, mask)
            x = x + block.mlp(block.norm2(x))
        cache.length = start + t
        if last_only:
            x = x[:, -1:]
        return self.head(self.norm(x))

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        stop_tokens: list[int] | None = None,
    ) -> torch.Tensor:
        """Sample continuations of idx (B, t) with a KV cache; returns (B, t + n) (n <= max_new_tokens).

        Rows that emitted a stop token keep emitting it; generation ends when all rows have
        stopped or the context is full. temperature 0 is greedy.

        Args:
            idx: (B, t) int64 prompt token ids (unpadded rows of equal length).
            max_new_tokens: the most tokens to add (also capped by the context).
            temperature: softmax temperature; 0 takes the argmax.
            top_k: sample only among the k most likely tokens (None: all).
            generator: the torch.Generator of the draws (for reproducible samples).
            stop_tokens: token ids that end a row.

        Returns:
            (B, t + n) int64: the prompt followed by the n generated tokens.
        """
        B, t = idx.shape
        n = min(max_new_tokens, self.config.context - t)
        cache = self.new_cache(B, t + n)
        logits = self.forward_step(idx, cache)[:, -1]
        out = [idx]
        stopped = torch.zeros(B, dtype=torch.bool, device=idx.device)
        stop = torch.tensor(stop_tokens or [], device=idx.device, dtype=idx.dtype)
        for i in range(n):
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits.float() / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            if len(stop):
                nxt = torch.where(stopped[:, None], out[-1][:, -1:], nxt)
                stopped |= torch.isin(nxt[:, 0], stop)
            out.append(nxt.to(idx.dtype))
            if (len(stop) and bool(stopped.all())) or i == n - 1:
                break
            logits = self.forward_step(out[-1], cache)[:, -1]
        return torch.cat(out, dim=1)
