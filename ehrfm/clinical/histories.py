"""Where each label's history lies in a token dir, cut at its prediction time.

The history of a label (subject_id, prediction_time) is the prefix of the subject's token
timeline whose tokens have time <= prediction_time (token times are non-decreasing within a
subject), less a trailing timeline-end token: that token says "no more events" and would leak
the future (for example no readmission). Models read at most the last `context` tokens of it.

Bad input is refused with one error naming the problem and the number of affected rows:
subjects missing from the token dir, and prediction times outside a subject's timeline (before
its first token or after its last). Labels whose history holds the subject's death (MEDS_DEATH
at or before the prediction time) are kept with one warning line (common.warn_death_in_history).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import polars as pl

from ehrfm.clinical.common import warn_death_in_history
from ehrfm.errors import UserError
from ehrfm.tokens import TokenDir

# Special tokens that mark the end of a timeline (the tokenizer's name first).
END_TOKENS = ("TIMELINE_END", "END", "EOS", "<eos>", "</s>")
DEATH_TOKEN = "MEDS_DEATH"


@dataclass
class Histories:
    """One row per label: its split and the [start, stop) span of its history in that split."""

    labels: pl.DataFrame  # subject_id, prediction_time, boolean_value, split
    start: np.ndarray  # int64, index into the split's flat tokens (the subject's first token)
    stop: np.ndarray  # int64, one past the last history token

    # Cached: callers index these per label (history_window), and converting the column on every
    # access made embedding n labels O(n^2) (8 minutes for 80k labels).
    @cached_property
    def split(self) -> np.ndarray:
        """Split name of each label row, (n,)."""
        return self.labels["split"].to_numpy()

    @cached_property
    def y(self) -> np.ndarray:
        """Label of each row as int64 0/1, (n,)."""
        return self.labels["boolean_value"].to_numpy().astype(np.int64)

    def lengths(self) -> np.ndarray:
        """History length of each row in tokens, (n,) int64."""
        return self.stop - self.start


def end_token_ids(td: TokenDir) -> set[int]:
    """Ids of the token dir's timeline-end tokens (those of END_TOKENS in its vocabulary)."""
    vocab = set(td.vocab)
    return {td.token_id(t) for t in END_TOKENS if t in vocab}


def locate_histories(td: TokenDir, labels: pl.DataFrame, labels_path: str | os.PathLike = "labels") -> Histories:
    """Attach each label's split and history span; refuse labels the token dir cannot serve."""
    where: dict[int, tuple[str, int]] = {}
    for name in td.splits:
        for i, sid in enumerate(td.split(name).subject_ids):
            where.setdefault(int(sid), (name, i))
    sids = labels["subject_id"].to_numpy()
    missing = np.array([int(s) not in where for s in sids], dtype=bool)
    if missing.any():
        n_subj = len(set(sids[missing].tolist()))
        raise UserError(
            f"label file {labels_path}: {int(missing.sum())} rows ({n_subj} subjects) have subjects missing from token dir {td.path}"
        )
    pred = labels["prediction_time"].cast(pl.Datetime("us")).dt.epoch("us").to_numpy().astype(np.int64)
    ends = end_token_ids(td)
    death = td.token_id(DEATH_TOKEN) if DEATH_TOKEN in set(td.vocab) else None
    first_death: dict[int, int] = {}  # subject -> flat index of its first MEDS_DEATH token (its end when none)
    dead_rows, dead_subjects = 0, set()
    split_names, start, stop = [], np.empty(len(sids), np.int64), np.empty(len(sids), np.int64)
    outside = 0
    unsorted: set[int] = set()
    checked: set[int] = set()  # subjects whose timeline order was checked: once each, not once per label
    for k, (sid, t) in enumerate(zip(sids, pred, strict=False)):
        name, i = where[int(sid)]
        sp = td.split(name)
        a = int(sp.offsets[i])
        b = a + int(sp.lengths[i])
        times = np.asarray(sp.times[a:b])
        if b == a or t < times[0] or t > times[-1]:
            outside += 1
            split_names.append(name)
            start[k], stop[k] = a, a
            continue
        # Checked once per subject: per label, a subject with many labels (hourly prediction times)
        # cost labels x timeline length (quadratic in the stay's length).
        if int(sid) not in checked:
            checked.add(int(sid))
            if np.any(np.diff(times) < 0):
                unsorted.add(int(sid))
        cut = a + int(np.searchsorted(times, t, side="right"))
        if cut > a and int(sp.tokens[cut - 1]) in ends:
            cut -= 1
        split_names.append(name)
        start[k], stop[k] = a, cut
        if death is not None:
            if int(sid) not in first_death:
                hits = np.flatnonzero(np.asarray(sp.tokens[a:b]) == death)
                first_death[int(sid)] = a + int(hits[0]) if len(hits) else b
            if first_death[int(sid)] < cut:
                dead_rows += 1
                dead_subjects.add(int(sid))
    if outside:
        raise UserError(
            f"label file {labels_path}: {outside} rows have a prediction_time outside the subject's timeline in token dir {td.path} "
            f"(before its first or after its last token)"
        )
    if unsorted:
        raise UserError(f"token dir {td.path}: token times decrease within {len(unsorted)} subjects' timelines; cannot cut histories")
    warn_death_in_history(labels_path, dead_rows, len(dead_subjects))
    return Histories(labels.with_columns(pl.Series("split", split_names, dtype=pl.Utf8)), start, stop)


def history_window(td: TokenDir, h: Histories, k: int, context: int) -> np.ndarray:
    """Token ids of label k's history, the last `context` of them."""
    sp = td.split(h.split[k])
    a = max(int(h.start[k]), int(h.stop[k]) - context)
    return np.asarray(sp.tokens[a : int(h.stop[k])], dtype=np.int64)


def select(h: Histories, mask: np.ndarray) -> Histories:
    """The histories of the rows where `mask` (n,) bool is True."""
    idx = np.flatnonzero(mask)
    return Histories(h.labels[idx], h.start[idx], h.stop[idx])
