"""Approach 3: the parametric loss L(N, D) = E + A / N^alpha + B / D^beta.

Fitted exactly as Hoffmann et al. (2022, "Training Compute-Optimal Large Language Models",
appendix D.2) and Besiroglu et al. (2024, "Chinchilla Scaling: A replication attempt") describe:

    min over (a, b, e, alpha, beta) of  sum_i Huber_delta( LSE(a - alpha ln N_i, b - beta ln D_i, e) - ln L_i )

with delta = 1e-3, A = exp(a), B = exp(b), E = exp(e), L-BFGS started from every point of the grid
alpha, beta in {0, .5, 1, 1.5, 2}; e in {-1, -.5, 0, .5, 1}; a, b in {0, 5, 10, 15, 20, 25}
(5 * 5 * 5 * 6 * 6 = 4,500 starts), keeping the best.

Speed: instead of 4,500 separate scipy calls, all starts run at once as one batched L-BFGS in
numpy (the objective and its analytic gradient are evaluated for every start in one
(starts x points) array pass), then the best start is polished with scipy's L-BFGS-B. The same
batched solver fits bootstrap replicates: a replicate is a weight (multiplicity) per point, so
B replicates x k starts are again one batch. The objective is divided by the constant delta so
that it is O(1) (the minimiser is unchanged; scipy's relative tolerances behave).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from analysis.fit_config import HUBER_DELTA  # defined beside the fit config, whose default it is

# The Hoffmann et al. / Besiroglu et al. initialisation grid.
GRID_ALPHA = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_BETA = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_A = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
GRID_B = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)

PARAM_NAMES = ("a", "b", "e", "alpha", "beta")  # column order of every theta array here


def init_grid() -> np.ndarray:
    """The 4,500 starting points, shape (4500, 5) in PARAM_NAMES order."""
    rows = itertools.product(GRID_A, GRID_B, GRID_E, GRID_ALPHA, GRID_BETA)
    return np.array(list(rows), dtype=np.float64)


def objective(theta, log_n, log_d, log_loss, weights=None, delta: float = HUBER_DELTA):
    """Huber objective (divided by delta) and its analytic gradient, for a batch of parameters.

    theta: (S, 5); log_n, log_d, log_loss: (P,); weights: None, (P,) or (S, P) point multiplicities.
    Returns f: (S,), grad: (S, 5).
    """
    theta = np.atleast_2d(theta)
    a, b, e, alpha, beta = (theta[:, i : i + 1] for i in range(5))
    p1 = a - alpha * log_n  # ln(A / N^alpha)
    p2 = b - beta * log_d  # ln(B / D^beta)
    m = np.maximum(np.maximum(p1, p2), e)  # the LSE shift, for stability
    # In place from here on: these (S x P) arrays are the whole cost of a fit.
    np.exp(np.subtract(p1, m, out=p1), out=p1)
    np.exp(np.subtract(p2, m, out=p2), out=p2)
    p3 = np.exp(e - m)
    total = p1 + p2
    total += p3
    r = np.log(total)
    r += m
    r -= log_loss  # residual of ln L
    psi = np.clip(r, -delta, delta)
    psi /= delta  # d huber / d r, in [-1, 1]
    huber = r - (0.5 * delta) * psi
    huber *= psi  # Huber / delta: 0.5 r^2 / delta inside, |r| - delta / 2 outside
    if weights is not None:
        huber *= weights
        psi = psi * weights
    f = huber.sum(axis=1)
    # d lse / d(term k) is the softmax weight of term k.
    psi /= total
    p1 *= psi
    p2 *= psi
    p3 *= psi
    grad = np.stack([p1.sum(1), p2.sum(1), p3.sum(1), -(p1 @ log_n), -(p2 @ log_d)], axis=1)
    return f, grad


def batched_lbfgs(fun, x0, max_iter: int = 1000, memory: int = 10, gtol: float = 1e-5, ftol: float = 2.2e-9):
    """Minimise many independent problems at once with L-BFGS and a backtracking Armijo search.

    fun(x, idx) -> (f, g) evaluates rows `idx` of the batch at x (shape (len(idx), n)).
    Returns (x, f, n_iter) with x (S, n), f (S,). Each row stops on its own with scipy's L-BFGS-B
    criteria and defaults: gradient max-norm <= gtol, or (f_k - f_k+1) / max(|f_k|, |f_k+1|, 1) <= ftol.
    """
    x = np.array(x0, dtype=np.float64)
    S, n = x.shape
    all_idx = np.arange(S)
    f, g = fun(x, all_idx)
    s_hist = np.zeros((S, memory, n))
    y_hist = np.zeros((S, memory, n))
    rho = np.zeros((S, memory))
    n_hist = np.zeros(S, dtype=np.int64)  # valid pairs per row (ring buffer, newest at (n_hist-1) % memory)
    active = np.ones(S, dtype=bool)
    n_iter = np.zeros(S, dtype=np.int64)
    for _ in range(max_iter):
        idx = all_idx[active]
        if idx.size == 0:
            break
        xa, fa, ga = x[idx], f[idx], g[idx]
        direction, slope = _lbfgs_direction(ga, s_hist, y_hist, rho, n_hist, idx, memory)
        step, x_new, f_new, g_new = _armijo_backtrack(fun, idx, xa, fa, direction, slope)
        _expand_steep_steps(fun, idx, xa, fa, direction, slope, step, x_new, f_new, g_new)
        ok = np.isfinite(f_new) & (f_new <= fa)
        s = np.where(ok[:, None], x_new - xa, 0.0)
        y = np.where(ok[:, None], g_new - ga, 0.0)
        sy = np.einsum("ij,ij->i", s, y)
        store = ok & (sy > 1e-12 * np.linalg.norm(s, axis=1) * np.linalg.norm(y, axis=1))
        slot = n_hist[idx] % memory
        rows = idx[store]
        s_hist[rows, slot[store]] = s[store]
        y_hist[rows, slot[store]] = y[store]
        rho[rows, slot[store]] = 1.0 / sy[store]
        n_hist[rows] += 1
        x[idx[ok]] = x_new[ok]
        f_prev = fa
        f[idx[ok]] = f_new[ok]
        g[idx[ok]] = g_new[ok]
        n_iter[idx] += 1
        rel = (f_prev - f[idx]) / np.maximum(np.maximum(np.abs(f_prev), np.abs(f[idx])), 1.0)
        converged = (np.abs(g[idx]).max(axis=1) <= gtol) | (ok & (rel <= ftol))
        active[idx] = ~(converged | ~ok)
    return x, f, n_iter


def _lbfgs_direction(ga, s_hist, y_hist, rho, n_hist, idx, memory):
    """L-BFGS two-loop recursion, vectorised over rows (rows with fewer pairs skip missing slots).

    Returns (direction (m, n), slope (m,) = direction . g); a row whose direction does not descend
    restarts from steepest descent (its history is cleared in n_hist).
    """
    q = ga.copy()
    k = n_hist[idx]
    alphas = np.zeros((idx.size, memory))
    for j in range(memory):
        slot = (k - 1 - j) % memory
        has = j < np.minimum(k, memory)
        s_j = s_hist[idx, slot]
        y_j = y_hist[idx, slot]
        r_j = rho[idx, slot] * has
        al = r_j * np.einsum("ij,ij->i", s_j, q)
        alphas[:, j] = al
        q -= al[:, None] * y_j
    last = (k - 1) % memory
    s_l, y_l = s_hist[idx, last], y_hist[idx, last]
    yy = np.einsum("ij,ij->i", y_l, y_l)
    gamma = np.where(k > 0, np.einsum("ij,ij->i", s_l, y_l) / np.where(yy > 0, yy, 1.0), 0.0)
    # Before any curvature pair exists, take a step of unit length along -g (as scipy does).
    gnorm = np.linalg.norm(ga, axis=1)
    gamma = np.where(k > 0, gamma, 1.0 / np.maximum(gnorm, 1e-300))
    q *= gamma[:, None]
    for j in reversed(range(memory)):
        slot = (k - 1 - j) % memory
        has = j < np.minimum(k, memory)
        r_j = rho[idx, slot] * has
        be = r_j * np.einsum("ij,ij->i", y_hist[idx, slot], q)
        q += s_hist[idx, slot] * (alphas[:, j] - be)[:, None]
    direction = -q
    slope = np.einsum("ij,ij->i", direction, ga)
    bad = ~(slope < 0)  # not a descent direction: restart from steepest descent
    if bad.any():
        direction[bad] = -ga[bad] / np.maximum(gnorm[bad], 1e-300)[:, None]
        slope[bad] = np.einsum("ij,ij->i", direction[bad], ga[bad])
        n_hist[idx[bad]] = 0
    return direction, slope


def _armijo_backtrack(fun, idx, xa, fa, direction, slope):
    """Backtracking line search from step 1, halving; only rows still failing Armijo are re-evaluated.

    Returns (step, x_new, f_new, g_new).
    """
    step = np.ones(idx.size)
    x_new = xa + direction
    f_new, g_new = fun(x_new, idx)
    for _ in range(40):
        fail = ~(f_new <= fa + 1e-4 * step * slope) | ~np.isfinite(f_new)
        if not fail.any():
            break
        step[fail] *= 0.5
        x_new[fail] = xa[fail] + step[fail, None] * direction[fail]
        f_new[fail], g_new[fail] = fun(x_new[fail], idx[fail])
    return step, x_new, f_new, g_new


def _expand_steep_steps(fun, idx, xa, fa, direction, slope, step, x_new, f_new, g_new) -> None:
    """Extend accepted full steps while the Wolfe curvature condition fails.

    Where the full step was accepted but the slope is still steep (the Wolfe curvature condition
    fails), keep doubling the step while it keeps improving; updates step, x_new, f_new, g_new in
    place. Without it a badly scaled quasi-Newton model (Huber kinks) can crawl for thousands of
    tiny steps.
    """
    armijo = np.isfinite(f_new) & (f_new <= fa + 1e-4 * step * slope)
    expand = armijo & (step == 1.0) & (np.einsum("ij,ij->i", g_new, direction) < 0.9 * slope)
    for _ in range(30):
        rows = np.flatnonzero(expand)
        if rows.size == 0:
            break
        t_try = step[rows] * 2.0
        x_try = xa[rows] + t_try[:, None] * direction[rows]
        f_try, g_try = fun(x_try, idx[rows])
        better = np.isfinite(f_try) & (f_try <= fa[rows] + 1e-4 * t_try * slope[rows]) & (f_try < f_new[rows])
        took = rows[better]
        step[took], x_new[took], f_new[took], g_new[took] = t_try[better], x_try[better], f_try[better], g_try[better]
        expand[:] = False
        expand[took] = np.einsum("ij,ij->i", g_try[better], direction[took]) < 0.9 * slope[took]


@dataclass
class ParametricFit:
    """The best Approach-3 fit. theta holds (a, b, e, alpha, beta)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float  # sum of Huber / delta at the optimum
    n_points: int
    n_starts: int
    theta: list[float] = field(default_factory=list)
    # Best distinct end points of the grid run (theta rows, best first): bootstrap refit starts.
    local_optima: np.ndarray | None = field(default=None, repr=False)

    @property
    def a(self) -> float:  # exponent of N_opt in C
        """Exponent a = beta / (alpha + beta) of N_opt in C (Hoffmann et al. 2022, eq. 4)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:  # exponent of D_opt in C
        """Exponent b = alpha / (alpha + beta) of D_opt in C (Hoffmann et al. 2022, eq. 4)."""
        return self.alpha / (self.alpha + self.beta)

    def loss(self, n, d):
        """Predicted loss E + A / N^alpha + B / D^beta at parameters n and tokens d (broadcast arrays)."""
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta


def theta_to_params(theta) -> dict:
    """The law's parameters from theta rows (..., 5) = (a, b, e, alpha, beta): E, A, B = exp(e, a, b).

    Returns:
        {"E", "A", "B", "alpha", "beta"}: arrays of theta's leading shape (inf where exp overflows).
    """
    a, b, e, alpha, beta = np.asarray(theta, dtype=float).T
    with np.errstate(over="ignore"):  # a runaway bootstrap replicate gives inf, dropped from intervals
        return {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha, "beta": beta}


def _polish(theta, log_n, log_d, log_loss, weights=None, delta=HUBER_DELTA):
    def fun(t):
        f, g = objective(t[None], log_n, log_d, log_loss, weights, delta)
        return f[0], g[0]

    res = minimize(fun, theta, jac=True, method="L-BFGS-B", options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-10})
    return (res.x, res.fun) if res.fun <= fun(theta)[0] else (np.asarray(theta), fun(theta)[0])


def fit_parametric(n_params, tokens, loss, starts: np.ndarray | None = None, delta: float = HUBER_DELTA) -> ParametricFit:
    """Fit L(N, D) from every start of the grid (default: the full 4,500) and keep the best.

    Hoffmann et al. (2022, appendix D.2) as replicated by Besiroglu et al. (2024): Huber loss on
    ln L residuals, L-BFGS from every start (batched), the best polished with scipy's L-BFGS-B.

    Args:
        n_params: (P,) positive parameter counts N; P >= 5.
        tokens: (P,) positive training tokens D.
        loss: (P,) positive losses L (nats).
        starts: (S, 5) starting thetas in PARAM_NAMES order (default: init_grid()).
        delta: the Huber threshold on ln L residuals.

    Returns:
        ParametricFit, with the best distinct local optima kept as bootstrap refit starts.

    Raises:
        ValueError: fewer than 5 points.
    """
    log_n, log_d, log_loss = (np.log(np.asarray(v, dtype=np.float64)) for v in (n_params, tokens, loss))
    if log_n.size < 5:
        raise ValueError(f"the parametric law has 5 parameters; {log_n.size} points are too few")
    starts = init_grid() if starts is None else np.atleast_2d(starts)

    def fun(x, idx):
        return objective(x, log_n, log_d, log_loss, None, delta)

    x, f, _ = batched_lbfgs(fun, starts)
    best = int(np.nanargmin(f))
    theta, fbest = _polish(x[best], log_n, log_d, log_loss, None, delta)
    p = theta_to_params(theta)
    order = np.argsort(np.where(np.isfinite(f), f, np.inf))
    optima = [theta]
    for i in order:
        if len(optima) >= 8:
            break
        if all(np.max(np.abs(x[i] - o)) > 1e-2 for o in optima):
            optima.append(x[i])
    return ParametricFit(
        E=float(p["E"]), A=float(p["A"]), B=float(p["B"]), alpha=float(p["alpha"]), beta=float(p["beta"]),
        objective=float(fbest), n_points=int(log_n.size), n_starts=int(len(starts)), theta=[float(t) for t in theta],
        local_optima=np.array(optima),
    )


def bootstrap_parametric(n_params, tokens, loss, counts: np.ndarray, starts: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    """Refit every bootstrap replicate from every start in one batch.

    Refit each bootstrap replicate (a row of `counts`: how often each point was drawn) from
    every row of `starts`, all as one batch; return the best theta per replicate, shape (R, 5).
    """
    log_n, log_d, log_loss = (np.log(np.asarray(v, dtype=np.float64)) for v in (n_params, tokens, loss))
    counts = np.asarray(counts, dtype=np.float64)
    R, K = counts.shape[0], len(starts)
    weights = np.repeat(counts, K, axis=0)  # row r*K + k: replicate r, start k
    x0 = np.tile(starts, (R, 1))

    def fun(x, idx):
        return objective(x, log_n, log_d, log_loss, weights[idx], delta)

    x, f, _ = batched_lbfgs(fun, x0)
    f = np.where(np.isfinite(f), f, np.inf).reshape(R, K)
    best = f.argmin(axis=1)
    return x.reshape(R, K, 5)[np.arange(R), best]


# ---------------------------------------------------------------------------------------------
# Variable projection (the default Approach 3 fitter)
#
# For fixed exponents the law is linear in (E, A, B): L = E + A N^-alpha + B D^-beta. Variable
# projection (Golub & Pereyra 1973) solves that linear part exactly, by non-negative least squares
# on the loss, and searches only the two exponents. Open-Athena's scaling-law-analysis
# (github.com/Open-Athena/scaling-law-analysis, "a robust alternative via variable projection")
# shows it is far better conditioned than the 5-parameter Huber/L-BFGS fit above: no start grid
# over log A, log B, log E, no flat valleys where A and alpha trade off, and a 2-D landscape that a
# coarse grid covers. The non-negativity keeps E, A, B physical; a term the data cannot see gets
# coefficient 0 (and, through the bootstrap, an interval reported as not identified).

VARPRO_BOUNDS = (0.01, 5.0)  # the searched range of alpha and beta
VARPRO_GRID = 32  # coarse grid points per exponent, log-spaced over VARPRO_BOUNDS
_SUBSETS = [s for k in (1, 2, 3) for s in itertools.combinations(range(3), k)]


def _features(log_n, log_d, y, alpha, beta):
    """Per-point products for the Gram matrix of [1, N^-alpha, D^-beta].

    Per (alpha, beta) pair and point: the 9 products that make the Gram matrix and right-hand
    side of [1, N^-alpha, D^-beta]. alpha, beta: (..., K); returns (..., K, P, 9).
    """
    x1 = np.exp(-alpha[..., None] * log_n)
    x2 = np.exp(-beta[..., None] * log_d)
    one = np.ones_like(x1)
    return np.stack([one, x1, x2, x1 * x1, x1 * x2, x2 * x2, one * y, x1 * y, x2 * y], axis=-1)


def _nnls3(s: np.ndarray, yy: np.ndarray):
    """Batched exact non-negative least squares with 3 columns.

    Exact non-negative least squares with 3 columns, batched, from the weighted sums `s`
    (..., 9) of _features and yy = sum w y^2: every support subset is solved by its normal equations
    (columns scaled to unit norm, a 1e-12 ridge for collinear columns) and the best feasible one
    kept. Returns (coef (..., 3) = E, A, B, rss (...)).
    """
    g = np.stack([np.stack([s[..., 0], s[..., 1], s[..., 2]], -1), np.stack([s[..., 1], s[..., 3], s[..., 4]], -1),
                  np.stack([s[..., 2], s[..., 4], s[..., 5]], -1)], -2)
    r = s[..., 6:9]
    scale = np.sqrt(np.maximum(np.diagonal(g, axis1=-2, axis2=-1), 1e-300))
    gs = g / (scale[..., :, None] * scale[..., None, :])
    rs = r / scale
    best_rss = np.array(yy, dtype=float) * np.ones(s.shape[:-1])
    best = np.zeros(s.shape[:-1] + (3,))
    for sub in _SUBSETS:
        idx = list(sub)
        m = gs[..., idx, :][..., :, idx] + 1e-12 * np.eye(len(idx))
        with np.errstate(all="ignore"):
            c = np.linalg.solve(m, rs[..., idx][..., None])[..., 0]
            rss = yy - np.einsum("...i,...i->...", c, rs[..., idx])
        ok = np.all(c >= 0, axis=-1) & np.isfinite(rss) & (rss < best_rss)
        best_rss = np.where(ok, rss, best_rss)
        full = np.zeros_like(best)
        full[..., idx] = c
        best = np.where(ok[..., None], full, best)
    return best / scale, np.maximum(best_rss, 0.0)


# Elements of one _features block (128 MiB of float64). The products are made a block at a time: whole,
# the coarse grid of a 100,000-run table was a (1024, P, 9) array, 14.6 GB at its peak. Tables of up to
# ~1,800 runs fit in one block, so their sums (and fits) are those of a single product.
FEATURE_BLOCK = 1 << 24


def _varpro_eval(log_n, log_d, y, weights, alpha, beta):
    """NNLS coefficients and RSS for replicate weights (R, P) and exponents (R, K) or (K,)."""
    yy = weights @ (y * y)  # (R,)
    per_pair = log_n.size * 9
    if alpha.ndim == 1:  # the same pairs for every replicate: one matrix product per block of pairs
        step = max(1, FEATURE_BLOCK // per_pair)
        s = np.concatenate([np.einsum("rp,kpf->rkf", weights, _features(log_n, log_d, y, alpha[k:k + step], beta[k:k + step]),
                                      optimize=True) for k in range(0, alpha.shape[0], step)], axis=1)
    else:  # each replicate its own pairs: blocks of replicates
        step = max(1, FEATURE_BLOCK // (per_pair * alpha.shape[1]))
        s = np.concatenate([np.einsum("rp,rkpf->rkf", weights[r:r + step], _features(log_n, log_d, y, alpha[r:r + step],
                                      beta[r:r + step]), optimize=True) for r in range(0, alpha.shape[0], step)], axis=0)
    return _nnls3(s, yy[:, None])


def varpro_search(log_n, log_d, y, weights: np.ndarray, chunk: int = 64, tol: float = 1e-7, desc: str | None = None):
    """Variable projection: minimise the NNLS residual over (alpha, beta) per weight row.

    Minimise the NNLS residual over (alpha, beta) for each row of `weights` (R, P): a coarse
    log-spaced grid (VARPRO_GRID^2 pairs over VARPRO_BOUNDS), then a compass search in
    (ln alpha, ln beta) from its best point, halving the step until it is below `tol`.
    Returns (params (R, 5) = E, A, B, alpha, beta; rss (R,)). desc: a progress bar over the rows (replicates) by
    that name; its cost grows with the points (a 1e5-run table's bootstrap ran 20 minutes without a word).
    """
    from ehrfm.io import progress

    lo, hi = np.log(VARPRO_BOUNDS[0]), np.log(VARPRO_BOUNDS[1])
    axis = np.linspace(lo, hi, VARPRO_GRID)
    gu, gv = (v.ravel() for v in np.meshgrid(axis, axis, indexing="ij"))
    moves = np.array([(du, dv) for du in (-1, 0, 1) for dv in (-1, 0, 1)], dtype=float)  # (9, 2), centre at 4
    out_p, out_r = [], []
    bar = progress(total=weights.shape[0], desc=desc, unit="replicate", **({"disable": True} if desc is None else {}))
    for start in range(0, weights.shape[0], chunk):
        w = weights[start : start + chunk]
        _, rss = _varpro_eval(log_n, log_d, y, w, np.exp(gu), np.exp(gv))
        j = np.nanargmin(np.where(np.isfinite(rss), rss, np.inf), axis=1)
        u, v = gu[j], gv[j]
        step = np.full(u.shape, axis[1] - axis[0])
        for _ in range(200):
            if np.all(step < tol):
                break
            cu = np.clip(u[:, None] + step[:, None] * moves[:, 0], lo, hi)
            cv = np.clip(v[:, None] + step[:, None] * moves[:, 1], lo, hi)
            _, rss = _varpro_eval(log_n, log_d, y, w, np.exp(cu), np.exp(cv))
            rss = np.where(np.isfinite(rss), rss, np.inf)
            k = rss.argmin(axis=1)
            stay = rss[np.arange(len(k)), k] >= rss[:, 4] * (1 - 1e-12)
            k = np.where(stay, 4, k)
            u, v = cu[np.arange(len(k)), k], cv[np.arange(len(k)), k]
            step = np.where(stay, step / 2, step)
        coef, rss = _varpro_eval(log_n, log_d, y, w, np.exp(u)[:, None], np.exp(v)[:, None])
        out_p.append(np.column_stack([coef[:, 0], np.exp(u), np.exp(v)]))
        out_r.append(rss[:, 0])
        bar.update(len(w))
    bar.close()
    return np.concatenate(out_p), np.concatenate(out_r)


@dataclass
class VarProFit:
    """The variable-projection fit of L = E + A / N^alpha + B / D^beta (least squares on L)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    rss: float  # sum of squared loss residuals at the optimum (weighted, in a weighted fit)
    n_points: int
    n_starts: int  # coarse grid pairs searched
    at_bound: list[str] = field(default_factory=list)  # "alpha"/"beta" when the optimum is at VARPRO_BOUNDS

    @property
    def a(self) -> float:
        """Exponent a = beta / (alpha + beta) of N_opt in C (Hoffmann et al. 2022, eq. 4)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent b = alpha / (alpha + beta) of D_opt in C (Hoffmann et al. 2022, eq. 4)."""
        return self.alpha / (self.alpha + self.beta)

    def loss(self, n, d):
        """Predicted loss E + A / N^alpha + B / D^beta at parameters n and tokens d (broadcast arrays)."""
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta


def fit_varpro(n_params, tokens, loss, weights=None) -> VarProFit:
    """Fit L(N, D) by variable projection (see above): (alpha, beta) searched, (E, A, B) >= 0 solved.

    Args:
        n_params: (P,) positive parameter counts; P >= 5.
        tokens: (P,) positive training tokens.
        loss: (P,) positive losses (nats).
        weights: (P,) positive weights of the squared residuals (weighted least squares; rss is
            then the weighted sum), or None for 1 each.

    Returns:
        VarProFit.

    Raises:
        ValueError: fewer than 5 points.
    """
    log_n, log_d = np.log(np.asarray(n_params, dtype=np.float64)), np.log(np.asarray(tokens, dtype=np.float64))
    y = np.asarray(loss, dtype=np.float64)
    if y.size < 5:
        raise ValueError(f"the parametric law has 5 parameters; {y.size} points are too few")
    w = np.ones((1, y.size)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(1, y.size)
    p, rss = varpro_search(log_n, log_d, y, w)
    E, A, B, alpha, beta = (float(v) for v in p[0])
    at_bound = [name for name, v in (("alpha", alpha), ("beta", beta))
                if min(abs(np.log(v / VARPRO_BOUNDS[0])), abs(np.log(v / VARPRO_BOUNDS[1]))) < 1e-6]
    return VarProFit(E=E, A=A, B=B, alpha=alpha, beta=beta, rss=float(rss[0]), n_points=int(y.size),
                     n_starts=VARPRO_GRID**2, at_bound=at_bound)


def bootstrap_varpro(n_params, tokens, loss, counts: np.ndarray, desc: str | None = None) -> np.ndarray:
    """Refit each bootstrap replicate by variable projection.

    Refit each bootstrap replicate (a row of `counts`: how often each point was drawn, times its
    weight in a weighted fit); returns (R, 5) = E, A, B, alpha, beta. desc: a progress bar's name (None: no bar).
    """
    log_n, log_d = np.log(np.asarray(n_params, dtype=np.float64)), np.log(np.asarray(tokens, dtype=np.float64))
    # The point fit's tolerance: at 1e-4 in ln alpha (assumed far below the replicates' spread), a table
    # without noise got intervals 1e-4 wide beside the estimate, excluding it (alpha 0.34 [0.33997, 0.33999]).
    p, _ = varpro_search(log_n, log_d, np.asarray(loss, dtype=np.float64), np.asarray(counts, dtype=np.float64),
                         desc=desc)
    return p
