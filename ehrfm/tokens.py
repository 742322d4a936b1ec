"""Read a token dir (the output of `ehrfm tokenize`), without torch.

A token dir holds:

    tokenizer.json            everything fitted on train: vocab (index = token id), quantile edges,
                              interval bins, age bins, min_count (see tokenization/tokenize.py)
    stats.json                subjects, events, code_events, tokens, unk_fraction, ... per split,
                              vocab size, code mode (see tokenization.tokenize.tokenize)
    config.json               the TokenizeConfig that made it (meds_dir, min_count, ...)
    {split}/tokens.npy        flat uint16/uint32 token ids, all subjects concatenated
    {split}/times.npy         int64 microseconds since the epoch, one per token, aligned
    {split}/index.parquet     subject_id, offset, length (subject i = tokens[offset:offset+length])

Usage:

    td = TokenDir("tok")
    td.vocab_size, td.token_id("MEDS_DEATH"), td.fingerprint
    train = td.split("train")
    tokens, times = train.subject(0)
    td.decode(tokens[:20])
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ehrfm.errors import UserError
from ehrfm.io import load_npy, read_json, read_parquet
from ehrfm.meds_io import SPLITS  # the MEDS split names (the `meds` package's constants)

_REDO = "re-create the token dir with `ehrfm tokenize`"


@dataclass
class TokenSplit:
    """One split of a token dir: the flat arrays (memory-mapped) and the per-subject index."""

    name: str
    tokens: np.ndarray  # np.memmap, uint16 or uint32
    times: np.ndarray  # np.memmap, int64 us since epoch
    subject_ids: np.ndarray  # int64, one per subject, in file order
    offsets: np.ndarray  # int64 start of each subject in tokens/times
    lengths: np.ndarray  # int64 number of tokens of each subject

    def __len__(self) -> int:
        return len(self.subject_ids)

    @property
    def n_tokens(self) -> int:
        """Number of tokens in the split."""
        return int(self.tokens.shape[0])

    def subject(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and times of the i-th subject of this split (views, not copies)."""
        start = int(self.offsets[i])
        stop = start + int(self.lengths[i])
        return self.tokens[start:stop], self.times[start:stop]

    def subject_index(self) -> dict[int, int]:
        """subject_id -> position i in this split (for `subject(i)`)."""
        return {int(s): i for i, s in enumerate(self.subject_ids)}


class TokenDir:
    """A token dir written by `ehrfm tokenize` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        from ehrfm.io import check_not_temporary

        check_not_temporary(path, "token dir")
        self.path = Path(path)
        if not (self.path / "tokenizer.json").is_file():
            raise UserError(f"{self.path} is not a token dir: tokenizer.json not found (run `ehrfm tokenize` first)")
        self._splits: dict[str, TokenSplit] = {}
        self._ids_checked: set[str] = set()  # splits whose every token id was read and found in the vocab
        self._digests: dict[str, str] = {}  # content_digest per split

    def __repr__(self) -> str:
        return f"TokenDir({str(self.path)!r}, vocab_size={self.vocab_size})"

    # --- the fitted tokenizer -------------------------------------------------------------------
    @cached_property
    def tokenizer_bytes(self) -> bytes:
        """The raw bytes of tokenizer.json (what `fingerprint` hashes)."""
        return (self.path / "tokenizer.json").read_bytes()

    @cached_property
    def tokenizer(self) -> dict:
        """The parsed tokenizer.json.

        Raises:
            UserError: tokenizer.json is not valid JSON or has no "vocab" list.
        """
        try:
            tok = json.loads(self.tokenizer_bytes)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{self.path / 'tokenizer.json'} is damaged: not valid JSON; {_REDO}") from None
        if not isinstance(tok, dict) or not isinstance(tok.get("vocab"), list):
            raise UserError(f"{self.path / 'tokenizer.json'} is damaged: no vocab list; {_REDO}")
        return tok

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of tokenizer.json: two token dirs with the same fingerprint share token ids."""
        return hashlib.sha256(self.tokenizer_bytes).hexdigest()

    @cached_property
    def vocab(self) -> list[str]:
        """Token strings in id order."""
        return list(self.tokenizer["vocab"])

    @property
    def vocab_size(self) -> int:
        """Number of tokens in the vocabulary (V)."""
        return len(self.vocab)

    @cached_property
    def _ids(self) -> dict[str, int]:
        return {tok: i for i, tok in enumerate(self.vocab)}

    def token_id(self, token: str) -> int:
        """Id of an exact token string (a MEDS code or a special token); KeyError if absent."""
        return self._ids[token]

    def token_ids_with_prefix(self, prefix: str) -> list[int]:
        """Ids of all tokens whose string starts with `prefix` (e.g. 'HOSPITAL_DISCHARGE//')."""
        return [i for i, tok in enumerate(self.vocab) if tok.startswith(prefix)]

    def decode(self, ids, source: str | None = None) -> list[str]:
        """Token ids (any shape, flattened) -> token strings.

        Raises:
            UserError: an id outside 0..vocab_size - 1, naming `source` (where the ids came from) and
                tokenizer.json, with how many ids (a hand-edited tokens.npy raised an IndexError traceback).
        """
        ids = np.asarray(ids).ravel()
        bad = int(((ids < 0) | (ids >= self.vocab_size)).sum()) if ids.size else 0
        if bad:
            raise UserError(f"{source or 'token ids'}: {bad} token id{'s' if bad > 1 else ''} outside 0..{self.vocab_size - 1}, "
                            f"the vocab of {self.path / 'tokenizer.json'} (tokens and tokenizer do not belong together); {_REDO}")
        vocab = self.vocab
        return [vocab[int(i)] for i in ids]

    @property
    def pad_id(self) -> int:
        """Id of the PAD token."""
        return self.token_id("PAD")

    @cached_property
    def code_mode(self) -> str:
        """How the tokenizer split codes: "hierarchical" or "flat" (tokenizer.json without the key: flat)."""
        return self.tokenizer.get("codes", "flat")

    @cached_property
    def event_head_mask(self) -> np.ndarray:
        """bool, shape (vocab_size,): True for the tokens that open an event.

        An event is one MEDS row emitted as code tokens (a static or timed code; MEDS_BIRTH is
        not one, it becomes the age token). Each event opens with exactly one head token: its
        code, its hierarchy head (category, chapter or a `<prefix>//*` fallback) or UNK. Interval,
        quantile, age, TIMELINE_START/END, PAD and continuation tokens (the rest of a hierarchical
        code) open none. So the events among any tokens are the head tokens among them, in
        either code mode.
        """
        # A hand-made tokenizer.json may list no special tokens: then only the framing ones are known.
        special = set(self.tokenizer.get("special_tokens", ("PAD", "TIMELINE_START", "TIMELINE_END"))) - {"UNK"}
        closed = special | set(self.tokenizer.get("continuation_tokens", []))
        return np.array([t not in closed for t in self.vocab], dtype=bool)

    def count_events(self, ids) -> int:
        """Events opened among token ids (any shape; negative ids, e.g. ignored targets, skipped)."""
        ids = np.asarray(ids).ravel()
        return int(self.event_head_mask[ids[ids >= 0]].sum())

    # --- provenance and stats -------------------------------------------------------------------
    @cached_property
    def stats(self) -> dict:
        """stats.json (counts written by `ehrfm tokenize`), or {} when absent.

        Raises:
            UserError: stats.json is damaged.
        """
        p = self.path / "stats.json"
        return read_json(p, "token stats", expect=dict, hint=_REDO) if p.is_file() else {}

    @cached_property
    def config(self) -> dict:
        """config.json (the TokenizeConfig the dir was made with), or {} when absent.

        Raises:
            UserError: config.json is damaged.
        """
        p = self.path / "config.json"
        return read_json(p, "token dir config", expect=dict, hint=_REDO) if p.is_file() else {}

    @property
    def meds_time_zones(self) -> list[str] | None:
        """The MEDS data's time zones other than UTC ([]: naive times), or None when not recorded (an older token dir)."""
        zones = self.stats.get("meds_time_zones")
        return [str(z) for z in zones] if isinstance(zones, list) else None

    @property
    def meds_dir(self) -> Path | None:
        """The MEDS dataset dir this token dir was made from, when recorded."""
        m = self.config.get("meds_dir")
        return Path(m) if m else None

    @property
    def splits(self) -> list[str]:
        """The splits present (those with a tokens.npy), in SPLITS order."""
        return [s for s in SPLITS if (self.path / s / "tokens.npy").is_file()]

    # --- the arrays -----------------------------------------------------------------------------
    def split(self, name: str) -> TokenSplit:
        """The memory-mapped arrays of split `name` (cached).

        Raises:
            UserError: the split is absent, or its arrays are damaged or inconsistent.
        """
        if name in self._splits:
            return self._splits[name]
        d = self.path / name
        if not (d / "tokens.npy").is_file():
            raise UserError(f"token dir {self.path} has no split {name!r} (found: {', '.join(self.splits) or 'none'})")
        tokens = load_npy(d / "tokens.npy", "token array", hint=_REDO)
        times = load_npy(d / "times.npy", "token times", hint=_REDO)
        index = read_parquet(d / "index.parquet", "token index", hint=_REDO)
        missing = [c for c in ("subject_id", "offset", "length") if c not in index.column_names]
        if missing:
            raise UserError(f"token index {d / 'index.parquet'} is damaged: missing column(s) {', '.join(missing)}; {_REDO}")
        _check_array(d / "tokens.npy", "token array", tokens, "integer token ids")
        _check_array(d / "times.npy", "token times", times, "int64 microseconds since the epoch", itemsize=8)
        import pyarrow.types as pat

        columns = {}
        for c in ("subject_id", "offset", "length"):
            col = index.column(c)
            if not pat.is_integer(col.type) or col.null_count:
                what = f"{col.null_count} null value(s)" if pat.is_integer(col.type) else f"type {col.type}"
                raise UserError(f"token index {d / 'index.parquet'} is damaged: column {c} has {what}, not integers; {_REDO}")
            columns[c] = col.to_numpy().astype(np.int64)
        split = TokenSplit(name=name, tokens=tokens, times=times, subject_ids=columns["subject_id"],
                           offsets=columns["offset"], lengths=columns["length"])
        if tokens.shape != times.shape or int(split.lengths.sum()) != tokens.shape[0]:
            raise UserError(f"token dir {d} is inconsistent: tokens, times and index.parquet disagree in length")
        _check_index(d / "index.parquet", split)
        self._splits[name] = split
        return split

    def content_digest(self, name: str) -> str:
        """sha256 of split `name`'s content: its token ids (tokens.npy's values) and its index.

        Two splits with the same digest hold the same timelines in the same order: what a run's
        resume checks, beyond the tokenizer's fingerprint and the split's counts, so that a token
        dir re-tokenized in place (same counts, other content) is never resumed on. Reads every
        token (about a second per GB); cached per TokenDir.
        """
        if name in self._digests:
            return self._digests[name]
        split = self.split(name)
        h = hashlib.sha256()
        h.update(f"{split.tokens.dtype.str}:{split.n_tokens}:{len(split)}".encode())
        for a in (split.subject_ids, split.offsets, split.lengths):
            h.update(np.ascontiguousarray(a, dtype="<i8").tobytes())
        step = 1 << 26  # 64 Mi tokens at a time: bounded memory on a memory-mapped array
        for i in range(0, split.n_tokens, step):
            h.update(np.ascontiguousarray(split.tokens[i:i + step]).tobytes())
        self._digests[name] = h.hexdigest()
        return self._digests[name]

    def check_token_ids(self, name: str, trust_stats: bool = True) -> None:
        """Refuse split `name` when a token id is outside 0..vocab_size - 1 (UserError naming the file).

        With `trust_stats`, stats.json's max_token_id (written by tokenize) spares a read of every
        token of an unsigned array; it is trusted only when its token count is the file's, else
        (older or hand-made dirs) the tokens are read. A signed array is always read for negative
        ids. A split that passed a full read is not read again by this TokenDir.
        """
        if name in self._ids_checked:
            return
        split = self.split(name)
        if split.n_tokens == 0:
            raise UserError(f"token dir {self.path}: split {name} has no tokens")
        where = f"token dir {self.path}: {name}/tokens.npy"
        tokens = np.asarray(split.tokens)
        if np.issubdtype(tokens.dtype, np.signedinteger) and int(tokens.min()) < 0:
            raise UserError(f"{where} has {int((tokens < 0).sum())} negative token ids (not token ids of tokenizer.json); {_REDO}")
        recorded = self.stats.get("splits", {}).get(name, {})
        read = not (trust_stats and isinstance(recorded.get("max_token_id"), int) and recorded.get("tokens") == split.n_tokens)
        top = int(tokens.max()) if read else recorded["max_token_id"]
        if top >= self.vocab_size:
            n_bad = int((tokens >= self.vocab_size).sum())
            what = f"has {n_bad} token ids" if n_bad else f"is recorded in stats.json with a token id {top}"
            raise UserError(
                f"{where} {what} >= the vocab size {self.vocab_size} of tokenizer.json "
                "(tokens and tokenizer do not belong together)"
            )
        if read:
            self._ids_checked.add(name)


def data_identity(td: TokenDir) -> dict:
    """The token data a run trains and evaluates on: counts and content digest of train and tuning.

    Recorded in config.json's "data"; a resume or a WSD branch on other data is refused
    (`data_differences`), and a sweep records it in sweep.json at planning and refuses other data at
    a re-plan and a launch. The digests (content_digest) catch a token dir re-tokenized in place
    with the same counts.
    """
    train, tuning = td.split("train"), td.split("tuning")
    return {
        "train_subjects": len(train),
        "train_tokens": train.n_tokens,
        "tuning_subjects": len(tuning),
        "tuning_tokens": tuning.n_tokens,
        "train_sha256": td.content_digest("train"),
        "tuning_sha256": td.content_digest("tuning"),
    }


def data_differences(saved: dict | None, expected: dict) -> list[str]:
    """What differs between a recorded "data" (a run dir's config.json, a sweep.json) and the token dir's, each key named.

    A key absent from the recorded data (a run dir of an older ehrfm, before content digests) is
    not compared; a recorded "data" that is not an object differs as a whole.
    """
    if not isinstance(saved, dict):
        return ["data (not recorded in config.json)"]
    out = []
    for key, now in expected.items():
        if key not in saved or saved[key] == now:
            continue
        if key.endswith("_sha256"):
            split = key.removesuffix("_sha256")
            out.append(f"{split} content ({split}/tokens.npy and index.parquet: sha256 differs)")
        else:
            out.append(f"{key} {saved[key]} vs {now}")
    return out


def _check_array(path: Path, what: str, a: np.ndarray, expected: str, itemsize: int | None = None) -> None:
    """Refuse a token dir array that is not 1-D integers (of `itemsize` bytes): one line naming the file."""
    ok = a.ndim == 1 and np.issubdtype(a.dtype, np.integer) and (itemsize is None or a.dtype.itemsize == itemsize)
    if not ok:
        raise UserError(f"{what} {path} is damaged: dtype {a.dtype} with {a.ndim} dimension(s), expected 1-D {expected}; {_REDO}")


def _check_index(path: Path, split: TokenSplit) -> None:
    """Refuse an index.parquet whose (offset, length) rows do not tile tokens.npy, or that repeats a subject.

    Subject i is tokens[offset:offset+length]: lengths >= 0, every slice inside the array and no
    two slices overlapping (with the lengths summing to the array's, checked before, they cover
    it exactly). Counts only in the message, never a subject's values.
    """
    n, off, length = split.n_tokens, split.offsets, split.lengths
    problems = []
    if (length < 0).any():
        problems.append(f"{int((length < 0).sum())} negative length(s)")
    if (off < 0).any() or (off + length > n).any():
        problems.append(f"{int(((off < 0) | (off + length > n)).sum())} subject(s) whose offset + length lie outside tokens.npy ({n} tokens)")
    if not problems and len(off) > 1:
        order = np.argsort(off, kind="stable")
        overlap = int((off[order][1:] < (off + length)[order][:-1]).sum())
        if overlap:
            problems.append(f"{overlap} subject(s) overlapping the one before them")
    if len(np.unique(split.subject_ids)) != len(split.subject_ids):
        problems.append(f"{len(split.subject_ids) - len(np.unique(split.subject_ids))} repeated subject_id(s)")
    if problems:
        raise UserError(f"token index {path} is damaged: {'; '.join(problems)}; {_REDO}")
