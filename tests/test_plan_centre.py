"""`sweep plan --centre-from FIT` (issue 13, item 4): larger budgets centred on a fit's N_opt law."""

from __future__ import annotations

import json
import math

import pytest
from test_sweep import ehrfm

from ehrfm.errors import UserError
from ehrfm.shapes import n_params_total, shape_for_params
from ehrfm.tokens import TokenDir

BUDGETS = [1e9, 2.5e9, 1e10, 4e10]
OPTS = dict(sizes=3, span_dex=0.5, context=64, train={"batch_size": 8})  # rungs 0.5 decades apart
RUNG = 0.5
N_COEF, A = 1.8, 0.5  # N_opt(1e10) = 1.8e5, N_opt(4e10) = 3.6e5: far above the D/N = 20 centres


def small_budget_table():
    """An IsoFLOP table at 1e12-8e12 FLOPs from Besiroglu's law with A and B divided by 10: the same
    N_opt law (it depends on A/B only) with losses of 2-4 nats/token, as a small model's are (the
    original constants give ~20 nats at these budgets, which the results table refuses as another unit)."""
    import dataclasses

    from analysis.synthetic import BESIROGLU, synthetic_results

    law = dataclasses.replace(BESIROGLU, A=BESIROGLU.A / 10, B=BESIROGLU.B / 10)
    return synthetic_results(law, budgets=(1e12, 2e12, 4e12, 8e12), sizes=7, span_decades=1.5, noise=0.002, seed=0)


def write_fits(path, n_coef=N_COEF, a=A, n_count=None, used=(4e8, 1e9, 2.5e9), b=None, intervals=True):
    """A fits.json with the contract's keys (DESIGN.md section 5) that the planner reads."""
    path.mkdir(parents=True)
    b = (1 - a if a is not None else None) if b is None else b
    ci = (lambda x: [x - 0.1, x + 0.1] if intervals and x is not None else [None, None])  # noqa: E731
    fits = {"approach2": {"a": a, "a_ci": ci(a), "n_coef": n_coef, "b": b, "b_ci": ci(b),
                          "budgets": [{"budget": b, "used": True} for b in used] + [{"budget": 3e11, "used": False}]},
            "inputs": {"bootstrap": 200 if intervals else 0}}
    if n_count:
        fits["n_count"] = n_count
    (path / "fits.json").write_text(json.dumps(fits))
    return path


def centre(rows, budget):
    """The middle target of a budget's 3-rung ladder."""
    targets = sorted({r["target_n_params"] for r in rows if r["budget"] == budget})
    assert len(targets) == 3
    return targets[1]


def on_grid(t):
    return abs(math.log10(t) / RUNG - round(math.log10(t) / RUNG)) < 1e-9  # odd ladders: integer rungs


def test_larger_budgets_centre_on_the_fit(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    _, plain, _ = plan_sweep(synth_tokens, BUDGETS, tmp_path / "plain", **OPTS)
    fit = write_fits(tmp_path / "fit")
    sweep, rows, warnings = plan_sweep(synth_tokens, BUDGETS, tmp_path / "centred", centre_from=fit, **OPTS)
    # the fitted budgets keep their ladders and run ids
    small = [r for r in plain if r["budget"] <= 2.5e9]
    assert small and [r for r in rows if r["budget"] <= 2.5e9] == small
    for budget in (1e10, 4e10):
        predicted = N_COEF * budget**A
        got, before = centre(rows, budget), centre(plain, budget)
        assert on_grid(got) and abs(math.log10(got / predicted)) <= RUNG / 2 + 1e-9, (budget, got, predicted)
        assert math.log10(got / before) >= 2 * RUNG - 1e-9  # the D/N = 20 guess was 2 rungs or more too small
    assert sweep.centre_law == {"fits": str((fit / "fits.json").resolve()), "n_coef": N_COEF, "a": A,
                                "n_count": "non-embedding", "from_budget": 2.5e9}
    assert json.loads((tmp_path / "centred" / "sweep.json").read_text())["centre_law"] == sweep.centre_law
    assert not any("centre" in w for w in warnings)

    # wsd: the same points, on the same shared rung grid, so trunks still serve several budgets
    _, wsd, _ = plan_sweep(synth_tokens, BUDGETS, tmp_path / "wsd", centre_from=fit, schedule="wsd", **OPTS)
    assert sorted((r["budget"], r["n_layer"], r["d_model"]) for r in wsd) == sorted((r["budget"], r["n_layer"], r["d_model"]) for r in rows)
    assert all(on_grid(r["target_n_params"]) for r in wsd)
    trunks = {}
    for r in wsd:
        trunks.setdefault(r["trunk_id"], set()).add(r["budget"])
    assert any(len(b) > 1 and max(b) >= 1e10 for b in trunks.values())  # a centred budget shares a trunk


def test_a_total_parameter_law_is_turned_into_the_familys_n(synth_tokens, tmp_path):
    from sweeps.plan import non_embedding_for_total, plan_sweep

    td = TokenDir(synth_tokens)
    _, rows, _ = plan_sweep(synth_tokens, BUDGETS, tmp_path / "s", centre_from=write_fits(tmp_path / "fit", n_count="total"), **OPTS)
    for budget in (1e10, 4e10):
        total = N_COEF * budget**A
        n = non_embedding_for_total(total, td.vocab_size, 64)
        assert n < 0.9 * total  # embedding and head (2 V d_model) are 15-30% of it here
        assert abs(math.log10(centre(rows, budget) / n)) <= RUNG / 2 + 1e-9
        # the member at n has about that total (to the family's spacing)
        assert abs(math.log10(n_params_total(shape_for_params(n, td.vocab_size, 64)) / total)) < 0.1
    # exact at a member: the member's own total maps back to its N
    cfg = shape_for_params(5e4, td.vocab_size, 64)
    from ehrfm.shapes import n_params

    assert non_embedding_for_total(n_params_total(cfg), td.vocab_size, 64) == pytest.approx(n_params(cfg), rel=1e-9)


def test_a_real_fit_centres_the_plan(synth_tokens, tmp_path):
    """fits.json as `ehrfm fit` writes it (a synthetic IsoFLOP table from a known law; budgets whose
    optima, ~1e5 parameters, lie well inside the family, so no two rungs snap to one shape)."""
    from analysis.fit import fit_results
    from analysis.fit import write_fits as write_fit_dir
    from sweeps.plan import plan_sweep

    table = small_budget_table()
    write_fit_dir(fit_results(table, approaches=(2,), bootstrap=200), tmp_path / "fit", plots=False)
    fits = json.loads((tmp_path / "fit" / "fits.json").read_text())
    sweep, rows, _ = plan_sweep(synth_tokens, [8e12, 3.2e13], tmp_path / "s", centre_from=tmp_path / "fit", **OPTS)
    a2 = fits["approach2"]
    assert sweep.centre_law["a"] == a2["a"] > 0 and sweep.centre_law["from_budget"] == 8e12
    predicted = a2["n_coef"] * 3.2e13 ** a2["a"]
    if sweep.centre_law["n_count"] == "total":
        from sweeps.plan import non_embedding_for_total

        predicted = non_embedding_for_total(predicted, TokenDir(synth_tokens).vocab_size, 64)
    assert abs(math.log10(centre(rows, 3.2e13) / predicted)) <= RUNG / 2 + 1e-9


def test_centre_from_bad_fits_is_one_clear_error(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    with pytest.raises(UserError, match="no fits.json there"):
        plan_sweep(synth_tokens, BUDGETS, tmp_path / "s1", centre_from=tmp_path / "nowhere", **OPTS)
    with pytest.raises(UserError, match=r"approach2.a = -0.15 \(3 budget\(s\) used\).*does not grow with compute"):
        plan_sweep(synth_tokens, BUDGETS, tmp_path / "s2", centre_from=write_fits(tmp_path / "neg", a=-0.15), **OPTS)
    with pytest.raises(UserError, match="approach2.n_coef = None"):
        plan_sweep(synth_tokens, BUDGETS, tmp_path / "s3", centre_from=write_fits(tmp_path / "nan", n_coef=None), **OPTS)
    assert not any((tmp_path / s).exists() for s in ("s1", "s2", "s3"))  # nothing half-written
    # no budget above the fit's: a note, and the plan is the plain one
    _, plain, _ = plan_sweep(synth_tokens, [1e9, 2.5e9], tmp_path / "plain", **OPTS)
    _, rows, warnings = plan_sweep(synth_tokens, [1e9, 2.5e9], tmp_path / "same", centre_from=write_fits(tmp_path / "ok"), **OPTS)
    assert rows == plain and any("no budget above the fit's largest (2.5e+09)" in w for w in warnings)

    p = ehrfm("sweep", "plan", "--tokens", synth_tokens, "--budgets", ",".join(map(str, BUDGETS)), "--sizes", "3",
              "--span-dex", "0.5", "--context", "64", "--batch-size", "8", "--out", tmp_path / "cli",
              "--centre-from", tmp_path / "neg")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "approach2.a = -0.15" in p.stderr
    assert not (tmp_path / "cli").exists()
    p = ehrfm("sweep", "plan", "--tokens", synth_tokens, "--budgets", ",".join(map(str, BUDGETS)), "--sizes", "3",
              "--span-dex", "0.5", "--context", "64", "--batch-size", "8", "--out", tmp_path / "cli",
              "--centre-from", tmp_path / "ok")
    assert p.returncode == 0, p.stderr
    assert "2 budget(s) above 2.5e+09 centred on N_opt = 1.8 C^0.500 (non-embedding parameters)" in p.stdout


def test_centre_from_an_untrusted_law_is_refused_or_flagged(synth_tokens, tmp_path):
    """The planner judges a law as `ehrfm recommend` does (analysis.recommend.trust): a D_opt that
    shrinks with compute is refused; a law without intervals may centre the ladders (a centre is a
    starting guess, bracketing extends it) but the plan says it is not trusted and why."""
    from analysis.fit import fit_results
    from analysis.fit import write_fits as write_fit_dir
    from sweeps.plan import plan_sweep

    with pytest.raises(UserError, match=r"approach2.b = -0.2: a law whose D_opt does not grow with compute"):
        plan_sweep(synth_tokens, BUDGETS, tmp_path / "s2", centre_from=write_fits(tmp_path / "bneg", b=-0.2), **OPTS)
    _, _, warnings = plan_sweep(synth_tokens, BUDGETS, tmp_path / "s1", centre_from=write_fits(tmp_path / "b0", intervals=False), **OPTS)
    assert any("the Approach 2 law is not trusted (fitted without bootstrap intervals: trust cannot be judged)" in w
               for w in warnings), warnings
    # a real fit made without intervals (`ehrfm fit --bootstrap 0`): planned, and the CLI prints the note
    table = small_budget_table()
    write_fit_dir(fit_results(table, approaches=(2,), bootstrap=0), tmp_path / "fit0", plots=False)
    p = ehrfm("sweep", "plan", "--tokens", synth_tokens, "--budgets", "8e12,3.2e13", "--sizes", "3",
              "--span-dex", "0.5", "--context", "64", "--batch-size", "8", "--out", tmp_path / "cli", "--centre-from", tmp_path / "fit0")
    assert p.returncode == 0 and "not trusted (fitted without bootstrap intervals" in p.stdout + p.stderr
    assert not (tmp_path / "s2").exists()
