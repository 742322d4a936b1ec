"""The GPT: exact parameter counts, block-diagonal packing, KV cache, equivalence with HF Llama."""

import pytest
import torch

from ehrfm.config import ModelConfig
from ehrfm.model import GPT, IGNORE_INDEX, attention_layout, segment_positions
from ehrfm.shapes import n_params, n_params_total


def small(**kw):
    base = dict(n_layer=2, d_model=32, n_head=2, context=64, vocab_size=50)
    base.update(kw)
    return ModelConfig(**base)


def model(cfg, seed=0):
    torch.manual_seed(seed)
    return GPT(cfg).eval()


@pytest.mark.parametrize("shape", [dict(), dict(n_layer=3, d_model=48, n_head=3, vocab_size=7), dict(mlp_hidden=40)])
def test_parameter_count_matches_shapes(shape):
    cfg = small(**shape)
    m = GPT(cfg)
    assert m.n_params() == n_params(cfg)
    assert sum(p.numel() for p in m.parameters()) == n_params_total(cfg)


def test_segment_positions_restart():
    seg = torch.tensor([[0, 0, 0, 1, 1, 2], [5, 5, 5, 5, 5, 5]])
    assert segment_positions(seg).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]


def test_single_segment_rows_use_plain_causal_kernel():
    seg = torch.tensor([[3, 3, 3], [7, 7, 7]])
    assert attention_layout(seg, 3, torch.device("cpu")).kind == "causal"
    assert attention_layout(None, 3, torch.device("cpu")).kind == "causal"
    lay = attention_layout(torch.tensor([[0, 0, 1]]), 3, torch.device("cpu"))
    assert lay.kind == "mask" and lay.mask[0, 0].tolist() == [[True, False, False], [True, True, False], [False, False, True]]


def test_packed_rows_compile_without_graph_breaks():
    """Under torch.compile the model never reads the segment ids back to the host (it took a graph
    break per forward on the CUDA path: scripts/gpu_check.sh); the compiled graph's packed losses equal eager's."""
    cfg = small(context=16)
    m = model(cfg)
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, cfg.vocab_size, (2, 16), generator=g)
    seg = torch.tensor([[0] * 7 + [1] * 9, [4] * 16])
    torch._dynamo.reset()
    explained = torch._dynamo.explain(m)(idx, idx, segment_ids=seg, reduction="none")
    assert explained.graph_break_count == 0, explained.break_reasons
    with torch.no_grad():
        _, eager = m(idx, idx, segment_ids=seg, reduction="none")
        _, alone = m(idx[1:], idx[1:], reduction="none")  # the one-segment row: the causal kernel
        _, compiled = torch.compile(m, backend="eager")(idx, idx, segment_ids=seg, reduction="none")
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=0)
    torch.testing.assert_close(eager[1], alone[0], atol=1e-5, rtol=0)


def test_packed_losses_equal_alone():
    """A subject's per-token losses are the same (1e-5) packed with others as alone."""
    cfg = small(context=64)
    m = model(cfg)
    g = torch.Generator().manual_seed(1)
    lengths = [17, 30, 9, 8]  # four subjects filling one row of 64
    subjects = [torch.randint(0, cfg.vocab_size, (n,), generator=g) for n in lengths]
    row = torch.cat(subjects)[None]
    seg = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    targets = row.clone()
    targets[:, :-1] = row[:, 1:]
    targets[:, -1] = IGNORE_INDEX
    targets[:, :-1][seg[:, 1:] != seg[:, :-1]] = IGNORE_INDEX  # the last token of a subject predicts nothing
    with torch.no_grad():
        _, packed = m(row, targets, segment_ids=seg, reduction="none")
        _, unpacked_wrongly = m(row, targets, reduction="none")  # without segments: attention leaks
        start = 0
        for s in subjects:
            n = len(s)
            tgt = torch.cat([s[1:], torch.tensor([IGNORE_INDEX])])[None]
            _, alone = m(s[None], tgt, reduction="none")
            torch.testing.assert_close(packed[0, start : start + n], alone[0], atol=1e-5, rtol=0)
            start += n
    assert not torch.allclose(packed[0, 17:47], unpacked_wrongly[0, 17:47], atol=1e-3)  # the test can fail


def test_kv_cache_matches_full_forward():
    cfg = small(context=40)
    m = model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = m(idx)
        cache = m.new_cache(3)
        steps = [m.forward_step(idx[:, :25], cache)]  # prefill
        for t in range(25, 40):
            steps.append(m.forward_step(idx[:, t : t + 1], cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 40
    with pytest.raises(ValueError, match="KV cache full"):
        m.forward_step(idx[:, :1], cache)


def test_generate_is_seeded_and_stops():
    cfg = small()
    m = model(cfg)
    prompt = torch.randint(0, cfg.vocab_size, (4, 5), generator=torch.Generator().manual_seed(3))
    a = m.generate(prompt, 20, generator=torch.Generator().manual_seed(9))
    b = m.generate(prompt, 20, generator=torch.Generator().manual_seed(9))
    assert a.shape == (4, 25) and torch.equal(a, b) and torch.equal(a[:, :5], prompt)
    greedy = m.generate(prompt, 3, temperature=0)
    with torch.no_grad():
        assert torch.equal(greedy[:, 5], m(prompt)[0][:, -1].argmax(-1))
    stop = int(greedy[0, 5])
    s = m.generate(prompt[:1], 10, temperature=0, stop_tokens=[stop])
    assert s.shape == (1, 6) and int(s[0, -1]) == stop


def test_hidden_states_are_final_normed_trunk():
    cfg = small()
    m = model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 10))
    with torch.no_grad():
        h = m.hidden_states(idx)
        logits, _ = m(idx)
    assert h.shape == (2, 10, cfg.d_model)
    torch.testing.assert_close(m.head(h), logits)
    torch.testing.assert_close(h.pow(2).mean(-1), torch.ones(2, 10), atol=0.1, rtol=0)  # gain 1 at init; eps shifts it a little


def test_same_function_as_hf_llama():
    """With copied weights, HF transformers' LlamaForCausalLM computes the same logits: it is Llama."""
    transformers = pytest.importorskip("transformers")
    cfg = small(n_layer=2, d_model=64, n_head=4, vocab_size=97, context=32)
    m = model(cfg)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
        max_position_embeddings=cfg.context, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
    )
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    d, h = cfg.d_model, cfg.mlp_hidden
    with torch.no_grad():
        hf.model.embed_tokens.weight.copy_(m.embed.weight)
        hf.lm_head.weight.copy_(m.head.weight)
        hf.model.norm.weight.copy_(m.norm.weight)
        for b, layer in zip(m.blocks, hf.model.layers, strict=False):
            q, k, v = b.attn.qkv.weight.split(d)
            layer.self_attn.q_proj.weight.copy_(q)
            layer.self_attn.k_proj.weight.copy_(k)
            layer.self_attn.v_proj.weight.copy_(v)
            layer.self_attn.o_proj.weight.copy_(b.attn.proj.weight)
            layer.mlp.gate_proj.weight.copy_(b.mlp.w13.weight[:h])
            layer.mlp.up_proj.weight.copy_(b.mlp.w13.weight[h:])
            layer.mlp.down_proj.weight.copy_(b.mlp.w2.weight)
            layer.input_layernorm.weight.copy_(b.norm1.weight)
            layer.post_attention_layernorm.weight.copy_(b.norm2.weight)
        idx = torch.randint(0, cfg.vocab_size, (2, 32))
        torch.testing.assert_close(m(idx)[0], hf(idx).logits, atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in hf.parameters()) == n_params_total(cfg)


def test_fused_training_loss_matches_reference_loss_and_grads():
    cfg = small(vocab_size=61)
    idx = torch.randint(0, cfg.vocab_size, (3, 40), generator=torch.Generator().manual_seed(4))
    tgt = torch.roll(idx, -1, 1)
    tgt[:, -1] = IGNORE_INDEX
    tgt[1, :7] = IGNORE_INDEX
    seg = (torch.arange(40) // 13).expand(3, -1)
    grads, losses = [], []
    for fused in (False, True):
        m = model(cfg).train()
        _, loss = m(idx, tgt, segment_ids=seg, reduction="sum", return_logits=not fused)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)
    m = model(cfg)
    assert m(idx, tgt, return_logits=False)[0] is None
    torch.testing.assert_close(m(idx, tgt, return_logits=False)[1], m(idx, tgt)[1], rtol=1e-5, atol=1e-6)


def test_fused_and_per_slice_matmuls_are_the_same_function(monkeypatch):
    """CPU multiplies by each slice of the fused qkv / gate|up weights, GPUs by the whole: same model."""
    import ehrfm.model as M

    cfg = small(n_layer=2, d_model=32, n_head=4)
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, cfg.vocab_size, (3, 20), generator=g)
    seg = torch.tensor([0] * 8 + [1] * 12).expand(3, -1)  # packed rows: RoPE positions gathered per segment
    out = {}
    for per_slice in (True, False):
        monkeypatch.setattr(M, "per_slice_matmuls", lambda x, v=per_slice: v)
        m = model(cfg).train()
        _, loss = m(idx, idx.roll(-1, 1), segment_ids=seg)
        loss.backward()
        with torch.no_grad():
            step = m.forward_step(idx[:, :5], m.new_cache(3))
        out[per_slice] = (loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}, step)
    torch.testing.assert_close(out[True][0], out[False][0], atol=1e-6, rtol=0)
    for name, grad in out[True][1].items():
        torch.testing.assert_close(grad, out[False][1][name], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[True][2], out[False][2], atol=1e-5, rtol=0)
