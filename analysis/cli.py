"""`ehrfm fit` and `ehrfm recommend`: thin wrappers over analysis.fit and analysis.recommend."""

from __future__ import annotations

import argparse

from ehrfm.cli_args import command, positive_number

# `ehrfm fit` prints at most this many "run X not fitted" lines per reason (status pending, failed ...).
EXCLUDED_LINES = 20


def _positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (--vocab-size 0 was taken as not given)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number like 512 (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1 (got {text!r})")
    return value


def _approaches(text: str) -> tuple[int, ...]:
    try:
        out = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list like 1,2,3 (got {text!r})") from None
    if not out or not set(out) <= {1, 2, 3}:
        raise argparse.ArgumentTypeError(f"approaches are 1, 2 and 3 (got {text!r})")
    return out


def _fit(args) -> int:
    import warnings

    from analysis.fit import FitConfig, FitWarning, fit_results, format_fit_table, write_fits
    from analysis.table import load_results
    from ehrfm.cli_args import build
    from ehrfm.io import check_overwrite, summary, warn

    cfg = build(FitConfig, args)
    check_overwrite(args.out, args.overwrite, inputs=(args.results,), command="fit")  # before the bootstrap, not after
    results = load_results(args.results, loss_column=args.loss_column)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)  # printed below, once, as part of the table
        fit = fit_results(results, config=cfg)
    write_fits(fit, args.out, results=results, overwrite=args.overwrite, plots=not args.no_plots, inputs=(args.results,))
    print(format_fit_table(fit))
    # never only in fits.json: a diverged or failed run must be seen; but a sweep collected mid-way has
    # hundreds of runs "status pending", whose lines buried every other warning: EXCLUDED_LINES of each kind
    by_kind: dict[str, int] = {}
    for e in fit.excluded:
        kind = e["reason"].split(":")[0]
        by_kind[kind] = by_kind.get(kind, 0) + 1
        if by_kind[kind] <= EXCLUDED_LINES:
            warn(f"run {e['run_id']} not fitted: {e['reason']}", "fit")
    for kind, n in by_kind.items():
        if n > EXCLUDED_LINES:
            warn(f"{n - EXCLUDED_LINES} more runs not fitted: {kind} (every run left out is listed in "
                 f"{args.out}/fits.json `excluded`)", "fit")
    fitted = [str(k) for k in cfg.approaches if getattr(fit, f"approach{k}") is not None]
    missing = [str(k) for k in cfg.approaches if getattr(fit, f"approach{k}") is None]
    summary(f"fit: {fit.n_fitted} runs ({len(fit.excluded)} excluded), approaches {','.join(fitted)} fitted"
            + (f" ({','.join(missing)} could not be)" if missing else "")
            + f", {len(fit.utility)} utility laws, {cfg.bootstrap} bootstrap replicates, "
            f"loss {results.loss_column} ({results.loss_unit}) -> {args.out}")
    return 0


def _recommend(args) -> int:
    import json

    from analysis.recommend import format_recommendation, recommend
    from ehrfm.io import to_jsonable

    rec = recommend(args.fit, args.flops, unique_tokens=args.unique_tokens, approach=args.approach,
                    vocab_size=args.vocab_size, context=args.context)
    if args.json:
        from analysis.fit import _finite_json

        print(json.dumps(_finite_json(to_jsonable(rec)), indent=2))
    else:
        print(format_recommendation(rec))
    return 0


def _fit_arguments(p) -> None:
    from analysis.fit_config import FitConfig
    from ehrfm.cli_args import add_fields

    p.add_argument("results", help="results table (.parquet or .csv), e.g. SWEEP/results.parquet")
    p.add_argument("--out", required=True, help="fit directory to write")
    add_fields(p, FitConfig, ["approaches", "bootstrap", "seed", "require_interior", "n_count", "approach3_method", "approach3_weights",
                              "approach2_bootstrap", "residual_scaling_level", "holdout", "max_epochs"],
               approaches=dict(flag="--approach", type=_approaches), require_interior=dict(flag="--keep-exterior"),
               n_count=dict(choices=("total", "non-embedding")), approach3_method=dict(choices=("varpro", "huber-lbfgs")),
               approach3_weights=dict(choices=("inverse-variance", "equal")),
               approach2_bootstrap=dict(choices=("residuals", "runs")),
               holdout=dict(flag="--no-holdout"), max_epochs=dict(type=positive_number))
    p.add_argument("--no-plots", action="store_true", help="skip the PNG/PDF plots")
    p.add_argument("--loss-column", choices=("loss", "loss_per_event"), default="loss",
                   help="the loss to fit: loss (held-out nats/token, default) or loss_per_event (nats/event, "
                        "to compare token dirs whose tokens per event differ, e.g. --codes hierarchical vs flat)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def register(sub):
    """Add the `ehrfm fit` and `ehrfm recommend` subcommands to the subparsers action `sub`."""
    command(sub, "fit", _fit, _fit_arguments,
            help="fit scaling laws (Approaches 1-3, utility) to a results table, with bootstrap intervals and plots",
            description="Fit IsoFLOP parabolas, power laws and the parametric law L(N, D) to a results table "
                        "(parquet or CSV with n_params, tokens, loss); writes OUT/fits.json, fits.md, plots.")

    r = command(sub, "recommend", _recommend,
                help="compute-optimal model size, tokens, shape, loss and utility for a FLOP budget",
                description="From a fit directory, what a budget of C FLOPs should buy, with intervals.")
    r.add_argument("fit", help="fit directory written by `ehrfm fit`")
    r.add_argument("--flops", type=positive_number, required=True, help="compute budget C in FLOPs, e.g. 1e18")
    r.add_argument("--unique-tokens", type=positive_number, default=None,
                   help="unique training tokens available (default: the results table's unique_tokens, if any)")
    r.add_argument("--approach", type=int, choices=(1, 2, 3), default=None, help="approach for the headline (default 3, else 2, else 1)")
    r.add_argument("--vocab-size", type=_positive_int, default=None, help="vocabulary size for the model shape (default: from the results table)")
    r.add_argument("--context", type=_positive_int, default=None, help="context length for the model shape (default: from the results table)")
    r.add_argument("--json", action="store_true", help="print the recommendation as JSON")
