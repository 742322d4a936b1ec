"""Boundary-preserving packing of subject timelines into context-length rows. Numpy only.

The stream. An epoch is every subject of a split, in an order drawn from the seed (training) or
in file order (evaluation), concatenated. Epochs follow each other, each with its own order:
epoch e uses numpy's PCG64 seeded with (seed, e). Stream position p is thus a pure function of
(seed, p), so the batch of any step can be rebuilt from the step number alone: resuming needs
no data-loader state, and DDP ranks agree on every batch without communication.

Rows. Row r of a stream starting at position s holds positions [s + r*T, s + (r+1)*T): no padding
inside the stream. Subjects are packed back to back; a position's segment is its (epoch, subject)
pair, and attention is block-diagonal causal over segments (ehrfm.model).

Long subjects (and any subject crossing a row end) are split into windows at row boundaries:
a subject of L tokens starting at column c of a row occupies T - c columns there and continues
at column 0 of the next row(s) as a new window. Each window is attended on its own (RoPE
positions restart at 0), so a window sees only its own tokens as history, as in GPT pretraining
on documents longer than the context. Every token of the stream is an input exactly once.

Targets. The target of a position is the next token of the same subject, including across a
window cut (that token is known), and IGNORE (-100) at the last token of a subject. Positions past
the requested number of tokens (only in the last, partial row of a run's last step or of the
eval set) are padding: token PAD, segment -1, target IGNORE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = -100
PAD_SEGMENT = -1
# A batch usually spans one epoch, at an epoch boundary two; a longer span (epochs shorter than a
# batch) recomputes each epoch once per call, in order.
MAX_CACHED_EPOCHS = 2


@dataclass
class PackedRows:
    """A batch of packed rows (numpy, int64): tokens, targets, segment ids, each (n_rows, T)."""

    tokens: np.ndarray
    targets: np.ndarray
    segment_ids: np.ndarray
    n_tokens: int  # real (non-padding) input positions

    @property
    def n_targets(self) -> int:
        """Number of scored targets (not IGNORE_INDEX) in the batch."""
        return int((self.targets != IGNORE_INDEX).sum())

    @property
    def one_segment_per_row(self) -> bool:
        """True when every row holds one segment id (a row ending in padding holds two): plain causal attention."""
        return bool((self.segment_ids == self.segment_ids[:, :1]).all())

    def take(self, rows) -> PackedRows:
        """The batch restricted to `rows` (an index or mask over n_rows), its n_tokens recounted."""
        t = self.tokens[rows]
        return PackedRows(t, self.targets[rows], self.segment_ids[rows], int((self.segment_ids[rows] != PAD_SEGMENT).sum()))


class PackedStream:
    """The packed token stream of one split (see the module docstring).

    split: an ehrfm.tokens.TokenSplit (tokens memmap, offsets, lengths); shuffle: a fresh
    subject order per epoch drawn from `seed`, else file order in every epoch.
    """

    def __init__(self, split, context: int, seed: int = 0, shuffle: bool = True, pad_id: int = 0):
        if len(split.lengths) == 0 or int(split.lengths.sum()) == 0:
            raise ValueError(f"split {split.name!r} has no tokens")
        self.tokens = split.tokens
        self.offsets = np.asarray(split.offsets, dtype=np.int64)
        self.lengths = np.asarray(split.lengths, dtype=np.int64)
        self.n_subjects = len(self.lengths)
        self.epoch_tokens = int(self.lengths.sum())
        self.context = int(context)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.pad_id = int(pad_id)
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(subject order, stream start of each slot within the epoch) of epoch e.

        The packer's whole index: 12 bytes per subject per cached epoch (int32 order, int64
        starts), at most MAX_CACHED_EPOCHS epochs, so memory is bounded by the subject count
        alone, not by the tokens or the number of epochs a run consumes.
        """
        hit = self._epochs.get(e)
        if hit is not None:
            return hit
        if self.shuffle:
            order = np.random.Generator(np.random.PCG64([self.seed, e])).permutation(self.n_subjects)
        else:
            order = np.arange(self.n_subjects)
        order = order.astype(np.int32 if self.n_subjects < 2**31 else np.int64)
        starts = np.zeros(self.n_subjects, dtype=np.int64)
        np.cumsum(self.lengths[order][:-1], out=starts[1:])
        while len(self._epochs) >= MAX_CACHED_EPOCHS:  # drop the oldest epoch first
            self._epochs.pop(next(iter(self._epochs)))
        self._epochs[e] = (order, starts)
        return order, starts

    @property
    def index_nbytes(self) -> int:
        """Bytes held by the cached epoch indexes (see `_epoch`); the token arrays are memory-mapped."""
        return sum(o.nbytes + s.nbytes for o, s in self._epochs.values())

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stream positions -> (flat token index in the split, segment id, offset in subject)."""
        positions = np.asarray(positions, dtype=np.int64)
        epoch = positions // self.epoch_tokens
        within = positions % self.epoch_tokens
        flat = np.empty_like(positions)
        segment = np.empty_like(positions)
        offset = np.empty_like(positions)
        for e in np.unique(epoch):
            sel = epoch == e
            order, starts = self._epoch(int(e))
            slot = np.searchsorted(starts, within[sel], side="right") - 1
            subject = order[slot]
            offset[sel] = within[sel] - starts[slot]
            flat[sel] = self.offsets[subject] + offset[sel]
            segment[sel] = int(e) * self.n_subjects + slot
        return flat, segment, offset

    def rows(self, start: int, n_tokens: int) -> PackedRows:
        """Packed rows covering stream positions [start, start + n_tokens), padded to whole rows."""
        T = self.context
        n_rows = -(-n_tokens // T)
        pos = np.arange(start, start + n_rows * T + 1, dtype=np.int64)  # one extra for the last target
        flat, segment, _ = self.locate(pos)
        tok = np.asarray(self.tokens[flat], dtype=np.int64)
        same_subject_next = segment[1:] == segment[:-1]
        targets = np.where(same_subject_next, tok[1:], IGNORE_INDEX)
        tokens, segment = tok[:-1].copy(), segment[:-1].copy()
        pad = np.arange(n_rows * T) >= n_tokens
        tokens[pad], segment[pad], targets[pad] = self.pad_id, PAD_SEGMENT, IGNORE_INDEX
        return PackedRows(tokens.reshape(n_rows, T), targets.reshape(n_rows, T), segment.reshape(n_rows, T), int(n_tokens))
