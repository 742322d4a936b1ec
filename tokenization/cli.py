"""`ehrfm synth`, `ehrfm etl`, `ehrfm tokenize`: thin wrappers over tokenization's public functions.

Only argparse at top level: the stage modules (polars, pyarrow, meds) load inside the handlers.
"""

from __future__ import annotations

import argparse

from ehrfm.cli_args import command


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.8,0.1,0.1 (got {text!r})") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.8,0.1,0.1 (got {text!r})")
    return parts


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1 (got {text!r})")
    return n


def _synth(args) -> int:
    from tokenization.synth import synthesize

    synthesize(args.out, n_patients=args.patients, seed=args.seed, overwrite=args.overwrite)
    return 0


# Set before polars and pyarrow load (they read it once): arrow's jemalloc pool, and both
# jemallocs with one arena, no thread cache and freed pages returned after 1 s. Peak RSS of
# `ehrfm etl` on the MIMIC-IV demo: ~249 MB without, ~241 MB with (the reference MIMIC_IV_MEDS: 499 MB).
# Returning pages at once (decay 0) saved ~1% of peak RSS but cost ~18% of the CPU time in page
# faults and madvise calls (30k synthetic patients: 46.8 vs 38.5 CPU s, 552 vs 560 MiB).
# Only for this process (a user's own setting wins); library callers keep their jemalloc settings
# (etl() itself only switches arrow's default pool to jemalloc).
_JEMALLOC_LEAN = "narenas:1,tcache:false,dirty_decay_ms:1000,muzzy_decay_ms:1000"
LEAN_ALLOCATOR_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc", "JE_ARROW_MALLOC_CONF": _JEMALLOC_LEAN,
                      "_RJEM_MALLOC_CONF": _JEMALLOC_LEAN}


def _raise_open_files_limit() -> None:
    """Raise this process's soft limit of open files to its hard limit (`ulimit -n`; etl holds a file per shard).

    Often 1024 of a hard 4096 or more: the workers, spawned after this, inherit it.
    """
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # not POSIX, or a hard limit the kernel refuses as soft
        pass


def _etl(args) -> int:
    import os

    # Set for the libraries loaded from here on, and taken back after: `ehrfm etl` run in-process (a
    # notebook calling ehrfm.app.cli.main, the tests) left them to every process it started later.
    ours = [k for k in LEAN_ALLOCATOR_ENV if k not in os.environ]
    os.environ.update({k: LEAN_ALLOCATOR_ENV[k] for k in ours})
    try:
        return _run_etl(args)
    finally:
        for k in ours:
            os.environ.pop(k, None)


def _run_etl(args) -> int:
    _raise_open_files_limit()
    from tokenization.etl import etl

    options = dict(split_fractions=args.split_fractions, split_seed=args.split_seed, shard_subjects=args.shard_subjects)
    if args.splits:
        options["splits_file"] = args.splits
    if args.tables is not None:  # --tables "" is refused (etl.named_tables), never read as every table
        options["tables"] = args.tables
    if args.workers is not None:
        options["workers"] = args.workers
    for name in ("dataset_name", "dataset_version", "billing_codes_at"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    etl(args.raw, args.out, overwrite=args.overwrite, **options)
    return 0


def _tokenize(args) -> int:
    from ehrfm.errors import UserError

    decode_only = {"--split": args.split, "--subject": args.subject, "--index": args.index, "--limit": args.limit}
    fit_only = {"--out": args.out, "--tokenizer": args.tokenizer, "--min-count": args.min_count, "--codes": args.codes,
                "--overwrite": args.overwrite or None}
    # a flag of the other mode was accepted and ignored (--decode --out wrote nothing; --subject without
    # --decode tokenized everything)
    if args.decode and (given := [f for f, v in fit_only.items() if v is not None]):
        raise UserError(f"{', '.join(given)} do{'es' if len(given) == 1 else ''} not apply with --decode (it prints one "
                        "subject's tokens of a token dir and writes nothing)")
    if not args.decode and (given := [f for f, v in decode_only.items() if v is not None]):
        raise UserError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} only with --decode (inspecting a "
                        "token dir); tokenize reads every subject of every split")
    if args.decode:
        return _decode(args)
    if not args.out:
        raise UserError("--out is required (or pass --decode to inspect a token dir)")
    from tokenization.tokenize import tokenize

    tokenize(args.meds, args.out, tokenizer=args.tokenizer, overwrite=args.overwrite, min_count=args.min_count,
             codes=args.codes)
    return 0


DECODE_LIMIT = 200  # tokens `tokenize --decode` prints by default


def _decode(args) -> int:
    import numpy as np

    from ehrfm.errors import UserError
    from ehrfm.io import printable
    from ehrfm.tokens import TokenDir

    limit = DECODE_LIMIT if args.limit is None else args.limit
    if limit < 0:
        raise UserError(f"--limit must be 0 (every token) or a positive number of tokens, not {limit}")
    if args.subject is not None and args.index is not None:
        raise UserError("give --subject or --index, not both")
    td = TokenDir(args.meds)
    name = args.split or "train"
    split = td.split(name)
    if args.subject is not None:
        pos = split.subject_index().get(args.subject)
        if pos is None:
            held = [s for s in td.splits if s != name and args.subject in td.split(s).subject_index()]
            raise UserError(f"subject {args.subject} is not in split {name!r} of {td.path}"
                            + (f"; it is in {held[0]!r} (pass --split {held[0]})" if held else "; nor in any other split"))
    else:
        pos = args.index or 0
        if not 0 <= pos < len(split):
            raise UserError(f"--index {pos} is out of range: split {name!r} has {len(split)} subjects")
    tokens, times = split.subject(pos)
    n = len(tokens) if limit == 0 else min(limit, len(tokens))
    stamps = np.asarray(times[:n]).astype("datetime64[us]").astype("datetime64[s]")
    # decoded before the header is printed: a bad id is one error line, not a header and a traceback
    shown = td.decode(tokens[:n], source=f"token dir {td.path}: {name}/tokens.npy, the shown subject's tokens")
    print(f"# subject {int(split.subject_ids[pos])} ({name}): {len(tokens)} tokens, showing {n}")
    for t, tok in zip(stamps, shown, strict=False):
        print(f"{t}  {printable(tok)}")  # a code holding a line break or ESC stays one line, inert
    return 0


def register(sub) -> None:
    """Add the `ehrfm synth`, `ehrfm etl` and `ehrfm tokenize` subcommands to the subparsers action `sub`."""
    p = command(
        sub, "synth", _synth, help="write a synthetic MIMIC-IV 2.2 dataset (hosp/, icu/ .csv.gz)",
        description="Synthetic raw MIMIC-IV with latent conditions driving diagnoses, labs, medications, "
                    "ICU stays, readmissions and deaths. Deterministic in the seed.",
    )
    p.add_argument("--out", required=True, help="output directory (the raw MIMIC-IV root)")
    p.add_argument("--patients", type=int, default=1000, help="number of patients (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    p = command(
        sub, "etl", _etl, help="convert raw MIMIC-IV (hosp/, icu/ CSV) to a MEDS dataset",
        description="Raw MIMIC-IV 2.x/3.x -> MEDS 0.4 (data/{train,tuning,held_out}/*.parquet, metadata/).",
    )
    p.add_argument("raw", help="raw MIMIC-IV directory holding hosp/ and icu/")
    p.add_argument("--out", required=True, help="output MEDS dataset directory")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--split-fractions", type=_fractions, default=(0.8, 0.1, 0.1), metavar="TRAIN,TUNING,HELD_OUT",
                   help="split by a stable hash of subject_id (default 0.8,0.1,0.1)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the split hash (default 0)")
    p.add_argument("--splits", metavar="SUBJECT_SPLITS.parquet", help="use these splits (subject_id, split) instead")
    p.add_argument("--shard-subjects", type=int, default=10_000, help="subjects per output shard (default 10000)")
    p.add_argument("--tables", metavar="T1,T2,...",
                   help="convert only these tables, e.g. labevents,icu/inputevents (default: every table present); "
                        "hosp/patients and hosp/admissions are always converted, an ED table brings ed/edstays "
                        "and emar_detail brings emar")
    p.add_argument("--dataset-name", metavar="NAME",
                   help="metadata/dataset.json's dataset_name (default: from RAW's path, e.g. mimiciv for "
                        "physionet.org/files/mimiciv/3.1)")
    p.add_argument("--dataset-version", metavar="VERSION",
                   help="metadata/dataset.json's dataset_version (default: from RAW's path, e.g. 3.1, else unknown)")
    p.add_argument("--billing-codes-at", choices=("procedure_day", "discharge"), default=None,
                   help="where a stay's procedure billing codes (procedures_icd, hcpcsevents) go: at the end of the "
                        "procedure's day (procedure_day, the default: it was charted then) or at the stay's discharge, "
                        "when coders assign them (discharge: codes as the EHR holds them at prediction time)")
    p.add_argument("--workers", type=_positive_int, metavar="N",
                   help="processes that stage tables and assemble shards side by side; 1: one process "
                        "(default: 1 for raw input under 64 MiB, else the usable CPUs, at most 4); the output is the same for any N")

    p = command(
        sub, "tokenize", _tokenize, help="tokenize a MEDS dataset (ETHOS-style), or --decode a token dir",
        description="MEDS -> token dir (tokenizer.json, {split}/tokens.npy, times.npy, index.parquet, stats.json). "
                    "Fitted on train, applied unchanged to tuning/held_out; --tokenizer applies an existing one. "
                    "With --decode, MEDS is a token dir and one subject's tokens are printed.",
    )
    p.add_argument("meds", metavar="MEDS", help="MEDS dataset directory (with --decode: a token dir)")
    p.add_argument("--out", help="output token directory")
    p.add_argument("--tokenizer", metavar="TOK0/tokenizer.json", help="apply this tokenizer unchanged instead of fitting")
    p.add_argument("--min-count", type=int, default=None,
                   help="codes seen fewer times in train become UNK (default 10; with --tokenizer, that tokenizer's)")
    p.add_argument("--codes", choices=("hierarchical", "flat"), default=None,
                   help="hierarchical: ICD codes as ETHOS-style hierarchy tokens, rare codes fall back to their "
                        "nearest frequent ancestor; flat: one token per code (default hierarchical; with "
                        "--tokenizer, that tokenizer's mode)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    g = p.add_argument_group("decode (inspection)")
    g.add_argument("--decode", action="store_true", help="print one subject's tokens with their times")
    g.add_argument("--split", help="split to decode from (default train)")
    g.add_argument("--subject", type=int, help="subject_id to decode")
    g.add_argument("--index", type=int, help="position of the subject in the split (default 0)")
    g.add_argument("--limit", type=int, help=f"tokens to print, 0 for all (default {DECODE_LIMIT})")
