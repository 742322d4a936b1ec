"""The packed stream: every token once per epoch, windows at row ends, targets, seeded order."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ehrfm.config import ModelConfig
from ehrfm.model import GPT
from ehrfm.packing import IGNORE_INDEX, PAD_SEGMENT, PackedStream


def split_of(lengths, base=1000):
    lengths = np.array(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    # token value encodes (subject, position) so that tests can read the layout back
    tokens = np.concatenate([base * (i + 1) + np.arange(n) for i, n in enumerate(lengths)]).astype(np.int64)
    return SimpleNamespace(name="train", tokens=tokens, offsets=offsets, lengths=lengths)


def test_one_epoch_covers_every_token_once_with_window_cuts():
    lengths = [5, 23, 7, 40, 3]  # 78 tokens; 40 > context: split over rows
    s = PackedStream(split_of(lengths), context=16, seed=0)
    rows = s.rows(0, 78)
    real = rows.tokens[rows.segment_ids != PAD_SEGMENT]
    assert sorted(real.tolist()) == sorted(split_of(lengths).tokens.tolist())  # each token exactly once
    assert rows.tokens.shape == (5, 16) and rows.n_tokens == 78 and (rows.segment_ids == PAD_SEGMENT).sum() == 2
    flat_tok, flat_tgt = rows.tokens.ravel()[:78], rows.targets.ravel()[:78]
    for tok, tgt in zip(flat_tok, flat_tgt, strict=False):
        subject, pos = divmod(int(tok), 1000)
        if pos == lengths[subject - 1] - 1:
            assert tgt == IGNORE_INDEX  # last token of a subject predicts nothing
        else:
            assert tgt == tok + 1  # next token of the same subject, also across row (window) cuts
    # a row boundary inside a subject starts a new window: positions restart (the model's view)
    from ehrfm.model import segment_positions

    pos = segment_positions(torch.from_numpy(rows.segment_ids))
    assert (pos[:, 0] == 0).all()


def test_order_is_seeded_and_epochs_differ():
    sp = split_of([10] * 20)
    a = PackedStream(sp, 32, seed=1).rows(0, 400).tokens
    b = PackedStream(sp, 32, seed=1).rows(0, 400).tokens
    c = PackedStream(sp, 32, seed=2).rows(0, 400).tokens
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    e0, e1 = PackedStream(sp, 200, seed=1).rows(0, 400).tokens  # two epochs of 200 tokens
    assert sorted(e0) == sorted(e1) and not np.array_equal(e0, e1)
    # any slice of the stream is rebuilt from its position alone (resume, DDP)
    whole = PackedStream(sp, 32, seed=1).rows(0, 320)
    assert np.array_equal(PackedStream(sp, 32, seed=1).rows(96, 64).tokens, whole.tokens[3:5])


def test_eval_stream_is_file_order():
    s = PackedStream(split_of([4, 4, 4]), 6, shuffle=False)
    assert s.rows(0, 12).tokens.ravel().tolist() == [1000, 1001, 1002, 1003, 2000, 2001, 2002, 2003, 3000, 3001, 3002, 3003]


def test_packed_training_rows_equal_unpacked_subjects():
    """End to end with the stream: per-token losses of a packed row == each window alone (1e-5)."""
    lengths = [9, 30, 14, 50]
    sp = split_of(lengths, base=0)
    sp.tokens = np.random.default_rng(0).integers(0, 50, size=int(sum(lengths)))
    rows = PackedStream(sp, 32, seed=3).rows(0, 96)
    torch.manual_seed(0)
    m = GPT(ModelConfig(n_layer=2, d_model=32, n_head=2, context=32, vocab_size=50)).eval()
    idx, tgt, seg = (torch.from_numpy(a) for a in (rows.tokens, rows.targets, rows.segment_ids))
    with torch.no_grad():
        _, packed = m(idx, tgt, segment_ids=seg, reduction="none")
        for r in range(idx.shape[0]):
            cuts = np.flatnonzero(np.diff(rows.segment_ids[r])) + 1
            for lo, hi in zip([0, *cuts], [*cuts, 32], strict=False):
                _, alone = m(idx[r : r + 1, lo:hi], tgt[r : r + 1, lo:hi], reduction="none")
                torch.testing.assert_close(packed[r, lo:hi], alone[0], atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="xformers path needs CUDA")
def test_xformers_and_sdpa_give_the_same_loss_on_cuda():
    pytest.importorskip("xformers")
    sp = split_of([9, 30, 14, 50, 60, 20], base=0)
    sp.tokens = np.random.default_rng(0).integers(0, 50, size=int(sp.lengths.sum()))
    rows = PackedStream(sp, 64, seed=3).rows(0, 183)
    torch.manual_seed(0)
    m = GPT(ModelConfig(n_layer=2, d_model=64, n_head=2, context=64, vocab_size=50)).cuda().eval()
    idx, tgt, seg = (torch.from_numpy(a).cuda() for a in (rows.tokens, rows.targets, rows.segment_ids))
    with torch.no_grad():
        m.attention_backend = "xformers"
        _, a = m(idx, tgt, segment_ids=seg)
        m.attention_backend = "sdpa"
        _, b = m(idx, tgt, segment_ids=seg)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_index_stays_bounded_and_rows_stay_identical_over_many_epochs():
    """The packer caches at most two epochs of index (12 bytes per subject each), however many
    epochs a run consumes, and rows rebuilt after eviction equal the plain concatenated stream."""
    lengths = np.random.default_rng(7).integers(1, 40, size=60)
    sp = split_of(lengths)
    s = PackedStream(sp, context=16, seed=4)
    epoch_tokens = int(lengths.sum())
    # The stream spelled out: each epoch's subjects, in PCG64((seed, epoch)) order, back to back.
    ref = np.concatenate([
        np.concatenate([sp.tokens[sp.offsets[i] : sp.offsets[i] + lengths[i]]
                        for i in np.random.Generator(np.random.PCG64([4, e])).permutation(60)])
        for e in range(25)
    ])
    for e in range(0, 24, 3):  # jump ahead epoch by epoch, crossing an epoch end each time
        start = e * epoch_tokens + epoch_tokens - 20
        rows = s.rows(start, 48)
        assert np.array_equal(rows.tokens.ravel(), ref[start : start + 48])
        assert s.index_nbytes <= 2 * 60 * (4 + 8)
    assert np.array_equal(s.rows(5, 96).tokens.ravel(), ref[5:101])  # epoch 0 again, rebuilt


def test_rows_of_one_segment_reach_the_model_without_segment_ids():
    """The trainer decides on the host which batches are unpacked (no device sync, no graph break)."""
    from ehrfm.train import _to_torch

    s = PackedStream(split_of([5, 23, 7, 40, 3]), context=16, seed=0)
    rows = s.rows(0, 78)
    packed = [i for i in range(len(rows.tokens)) if len(set(rows.segment_ids[i].tolist())) > 1]
    alone = [i for i in range(len(rows.tokens)) if len(set(rows.segment_ids[i].tolist())) == 1]
    assert packed and alone
    assert not rows.one_segment_per_row and rows.take(alone).one_segment_per_row
    assert _to_torch(rows.take(alone), "cpu")[2] is None
    seg = _to_torch(rows.take(packed), "cpu")[2]
    assert torch.equal(seg, torch.from_numpy(rows.segment_ids[packed]))
