"""Bayesian IVIM: the posterior of (f, D, D*) on a grid, amplitudes projected out (numba, voxels in parallel).

Model of one voxel's signal at b [s/mm²] (any scale; S0 is free, as in the OSIPI convention):

    S(b) = a e^{-b D} + c e^{-b D*},   a = S0 (1 - f) >= 0,  c = S0 f >= 0,   D < D*.

For every node (D_i, D*_j) of a grid (D linear on D_BOUNDS, D* geometric on DSTAR_BOUNDS; the OSIPI
default bounds; in two stages: a coarse grid over the bounds, then fine windows of D and log D* around
the coarse posterior, so the estimates are not limited to the coarse spacing) the two amplitudes are the non-negative
least-squares solution (variable projection: a 2x2
system per node, closed form) and give the residual sum of squares RSS_ij and f_ij = c/(a + c).

Posterior weight of a node (prior flat over D and over sqrt(D*), i.e. density ∝ sqrt(D*) per node of the
geometric D* grid: halfway between flat in D* and flat in log D*, which crowds the small D* (5-15 µm²/ms)
where the vascular and tissue decays are confounded; the amplitudes profiled):
- with a noise σ per voxel (normalised signal units): w ∝ exp(-RSS / 2σ²);
- without one, σ is integrated out under Jeffreys' prior: w ∝ RSS^{-(M - 2)/2} (M measurements).
The point estimates are posterior means (D*: of log D*, i.e. the geometric mean). SDs are posterior SDs;
f's adds each node's conditional variance of f from the amplitudes' covariance σ² G^{-1} (delta method,
law of total variance; σ² = the best node's RSS/(M - 4) when σ is unknown). The 95 % intervals are the
2.5 / 97.5 % quantiles of the grid marginals of D and log D*, and mean ± 1.96 SD clipped to [0, 1] for f.
The contraction is 1 - var_post / var_prior, var_prior the variance of the prior (f: uniform on [0, 1];
D*: of log D*). Units: b in s/mm², D and D* in µm²/ms; f dimensionless.
"""

from __future__ import annotations

import math

import numpy as np

from .likelihood import Z95
from numba import njit, prange

#: OSIPI default bounds: D [0, 5] µm²/ms (0-0.005 mm²/s), D* [5, 200] µm²/ms (0.005-0.2 mm²/s).
D_BOUNDS = (0.0, 5.0)
DSTAR_BOUNDS = (5.0, 200.0)
#: Nodes of the coarse D grid (linear on D_BOUNDS), of the per-voxel fine D window, and of D* (geometric).
N_D, N_D_FINE, N_DSTAR = 41, 17, 33
#: The fine windows: the previous posterior mean ± this many SDs, plus one coarse spacing; refinement passes.
FINE_HALF_WIDTH_SD, N_REFINE = 4.5, 2
#: Voxels per call of the kernel (bounds the outputs' memory: chunk x (2 N_D_FINE + N_DSTAR) doubles).
CHUNK = 8192
#: Summary columns of the kernel: first and second moments of f and S0, mean conditional variance of f.
_F, _S0, _VF, _N_SUMMARY = 0, 2, 4, 5


@njit(cache=True)
def _node_pass(yy, u, w, d, g11, g12, dstar, g22, rss, amp_t, amp_v):
    """Non-negative amplitudes and RSS at every node (d_i < dstar_j) of one voxel; returns the smallest RSS.
    u [N], w [S]: y's products with the bases; g11 [N], g22 [S], g12 [N, S]: their Gram entries; rss,
    amp_t, amp_v [N, S] are written (rss < 0 marks an excluded node)."""
    floor = 1e-18 * (yy + 1e-300)
    rss_min = 1e300
    for i in range(d.size):
        for j in range(dstar.size):
            if d[i] >= dstar[j]:
                rss[i, j] = -1.0
                continue
            a_in, c_in, gab = u[i], w[j], g12[i, j]
            det = g11[i] * g22[j] - gab * gab
            a = (g22[j] * a_in - gab * c_in) / det
            c = (g11[i] * c_in - gab * a_in) / det
            if c < 0.0:  # non-negative least squares: one amplitude at its bound
                c = 0.0
                a = max(a_in / g11[i], 0.0)
                r = yy - a * a_in
            elif a < 0.0:
                a = 0.0
                c = c_in / g22[j]
                r = yy - c * c_in
            else:
                r = yy - a * a_in - c * c_in
            r = max(r, floor)
            rss[i, j], amp_t[i, j], amp_v[i, j] = r, a, c
            rss_min = min(rss_min, r)
    return rss_min


@njit(cache=True)
def _weight(r, rss_min, prior, known, sigma2, n_int, half):
    """Posterior weight of a node of RSS r: prior x exp(-(r - rss_min)/2σ²) with σ, else x (rss_min/r)^((M-2)/2)
    (σ integrated out under Jeffreys' prior; by products and one sqrt)."""
    if known:
        return prior * math.exp(-(r - rss_min) / (2.0 * sigma2))
    q = rss_min / r
    wt = prior
    for _ in range(n_int):
        wt *= q
    if half:
        wt *= math.sqrt(q)
    return wt


@njit(cache=True)
def _basis(b, rates, e, gram):
    """e[i, k] = exp(-b_k rates_i) and gram[i] = |e[i]|²."""
    for i in range(rates.size):
        acc = 0.0
        for k in range(b.size):
            e[i, k] = math.exp(-b[k] * rates[i])
            acc += e[i, k] * e[i, k]
        gram[i] = acc


@njit(cache=True)
def _products(y, e, out):
    """out[i] = <y, e[i]>."""
    for i in range(e.shape[0]):
        acc = 0.0
        for k in range(y.size):
            acc += y[k] * e[i, k]
        out[i] = acc


@njit(cache=True, parallel=True)
def _posterior_kernel(y, b, d_coarse, e_coarse, g11_coarse, g12_coarse, dstar, e_s, g22_coarse, prior_s, sigma2,
                      summary, d_fine, ls_fine, marg_d, marg_s):
    """Two-stage grid posterior per voxel. y [V, M] at b [M] (ms/µm²); the coarse D grid d_coarse [N] with its
    bases e_coarse [N, M], g11_coarse [N], g12_coarse [N, S]; D* nodes dstar [S] with e_s [S, M], g22 [S];
    prior_s [S] prior weights of the D* nodes; sigma2 [V] (<= 0: σ integrated out). Stage 1 locates D on the
    coarse grid; N_REFINE passes then take the posterior on fine windows of D and log D* around the previous one, d_fine [V, F] and
    ls_fine [V, S] (written). Writes summary [V, _N_SUMMARY] (moments of f and S0, mean conditional variance
    of f), marg_d [V, F] and marg_s [V, S], the posterior marginals on d_fine[v] and ls_fine[v]."""
    n_v, m = y.shape
    n_c, n_s, n_f = d_coarse.size, dstar.size, d_fine.shape[1]
    n_int, half = (m - 2) // 2, (m - 2) % 2 == 1
    lo_d, hi_d = d_coarse[0], d_coarse[-1]
    spacing = d_coarse[1] - d_coarse[0]
    log_s = np.log(dstar)
    step_s = log_s[1] - log_s[0]
    for v in prange(n_v):
        yv = y[v]
        known = sigma2[v] > 0
        yy = 0.0
        for k in range(m):
            yy += yv[k] * yv[k]
        w = np.empty(n_s)
        _products(yv, e_s, w)
        # stage 1: the coarse D grid
        u = np.empty(n_c)
        _products(yv, e_coarse, u)
        rss = np.empty((n_c, n_s))
        amp_t = np.empty((n_c, n_s))
        amp_v = np.empty((n_c, n_s))
        rmin = _node_pass(yy, u, w, d_coarse, g11_coarse, g12_coarse, dstar, g22_coarse, rss, amp_t, amp_v)
        s0 = s1 = s2 = t1 = t2 = 0.0
        for i in range(n_c):
            for j in range(n_s):
                if rss[i, j] < 0:
                    continue
                wt = _weight(rss[i, j], rmin, prior_s[j], known, sigma2[v], n_int, half)
                s0 += wt
                s1 += wt * d_coarse[i]
                s2 += wt * d_coarse[i] * d_coarse[i]
                t1 += wt * log_s[j]
                t2 += wt * log_s[j] * log_s[j]
        # stage 2: fine windows of D and log D* around the coarse posterior (± FINE_HALF_WIDTH_SD SDs + a step)
        mean, m_s = s1 / s0, t1 / s0
        sd, sd_s = math.sqrt(max(s2 / s0 - mean * mean, 0.0)), math.sqrt(max(t2 / s0 - m_s * m_s, 0.0))
        for _ in range(N_REFINE):  # each pass: windows from the previous pass's posterior
            lo = max(lo_d, mean - FINE_HALF_WIDTH_SD * sd - spacing)
            hi = min(hi_d, mean + FINE_HALF_WIDTH_SD * sd + spacing)
            lo_s = max(log_s[0], m_s - FINE_HALF_WIDTH_SD * sd_s - step_s)
            hi_s = min(log_s[-1], m_s + FINE_HALF_WIDTH_SD * sd_s + step_s)
            e_f = np.empty((n_f, m))
            e_g = np.empty((n_s, m))
            g11 = np.empty(n_f)
            g22 = np.empty(n_s)
            g12 = np.empty((n_f, n_s))
            pw = np.empty(n_s)
            ds_v = np.empty(n_s)
            for i in range(n_f):
                d_fine[v, i] = lo + (hi - lo) * i / (n_f - 1)
            for j in range(n_s):
                ls_fine[v, j] = lo_s + (hi_s - lo_s) * j / (n_s - 1)
                ds_v[j] = math.exp(ls_fine[v, j])
                pw[j] = math.sqrt(ds_v[j] / dstar[-1])
            _basis(b, d_fine[v], e_f, g11)
            _basis(b, ds_v, e_g, g22)
            for i in range(n_f):
                for j in range(n_s):
                    acc = 0.0
                    for k in range(m):
                        acc += e_f[i, k] * e_g[j, k]
                    g12[i, j] = acc
            uf = np.empty(n_f)
            wf = np.empty(n_s)
            _products(yv, e_f, uf)
            _products(yv, e_g, wf)
            rss_f = np.empty((n_f, n_s))
            at_f = np.empty((n_f, n_s))
            av_f = np.empty((n_f, n_s))
            rpass = _node_pass(yy, uf, wf, d_fine[v], g11, g12, ds_v, g22, rss_f, at_f, av_f)
            rmin = min(rmin, rpass)
            s2n = sigma2[v] if known else rmin / max(m - 4, 1)  # noise variance of the amplitudes' covariance
            for q in range(_N_SUMMARY):
                summary[v, q] = 0.0
            for i in range(n_f):
                marg_d[v, i] = 0.0
            for j in range(n_s):
                marg_s[v, j] = 0.0
            total = 0.0
            for i in range(n_f):
                for j in range(n_s):
                    if rss_f[i, j] < 0:
                        continue
                    wt = _weight(rss_f[i, j], rpass, pw[j], known, sigma2[v], n_int, half)
                    if wt < 1e-14:
                        continue
                    total += wt
                    a, c = at_f[i, j], av_f[i, j]
                    tot = a + c
                    f = c / tot if tot > 0 else 0.0
                    # var(f | node) by the delta method: f = c / (a + c), cov(a, c) = s2n G^{-1}
                    det = g11[i] * g22[j] - g12[i, j] * g12[i, j]
                    da, dc = -f / max(tot, 1e-12), (1.0 - f) / max(tot, 1e-12)
                    var_f = s2n * (da * da * g22[j] - 2.0 * da * dc * g12[i, j] + dc * dc * g11[i]) / det
                    summary[v, _F] += wt * f
                    summary[v, _F + 1] += wt * f * f
                    summary[v, _VF] += wt * min(var_f, 0.25)
                    summary[v, _S0] += wt * tot
                    summary[v, _S0 + 1] += wt * tot * tot
                    marg_d[v, i] += wt
                    marg_s[v, j] += wt
            for q in range(_N_SUMMARY):
                summary[v, q] /= total
            mean = s2 = m_s = t2 = 0.0
            for i in range(n_f):
                marg_d[v, i] /= total
                mean += marg_d[v, i] * d_fine[v, i]
                s2 += marg_d[v, i] * d_fine[v, i] ** 2
            for j in range(n_s):
                marg_s[v, j] /= total
                m_s += marg_s[v, j] * ls_fine[v, j]
                t2 += marg_s[v, j] * ls_fine[v, j] ** 2
            sd, sd_s = math.sqrt(max(s2 - mean * mean, 0.0)), math.sqrt(max(t2 - m_s * m_s, 0.0))


class IvimGrid:
    """The coarse (D, D*) grid and its basis signals for b-values [s/mm²]; bounds in µm²/ms. Prior: flat in D
    and in sqrt(D*) (geometric D* nodes: weight ∝ sqrt(D*))."""

    def __init__(self, b_values, d_bounds=D_BOUNDS, dstar_bounds=DSTAR_BOUNDS, n_d=N_D, n_dstar=N_DSTAR,
                 n_fine=N_D_FINE):
        self.b = np.asarray(b_values, float) * 1e-3   # ms/µm²
        self.d = np.linspace(*d_bounds, n_d)
        self.dstar = np.geomspace(*dstar_bounds, n_dstar)
        self.n_fine = int(n_fine)
        self.e_d = np.exp(-np.outer(self.d, self.b))
        self.e_s = np.exp(-np.outer(self.dstar, self.b))
        self.g11, self.g22 = (self.e_d ** 2).sum(1), (self.e_s ** 2).sum(1)
        self.g12 = self.e_d @ self.e_s.T
        self.prior_s = np.sqrt(self.dstar / self.dstar.max())
        ws = self.prior_s / self.prior_s.sum()
        log_s = np.log(self.dstar)
        #: prior variances: f uniform on [0, 1], D flat on its bounds, log D* under the sqrt(D*) weights
        self.prior_var = {"fV": 1.0 / 12.0, "D": (d_bounds[1] - d_bounds[0]) ** 2 / 12.0,
                          "Dstar": float(ws @ log_s ** 2 - (ws @ log_s) ** 2)}


def _quantiles(marg: np.ndarray, nodes: np.ndarray, qs) -> list:
    """Quantiles qs of discrete marginals [V, K] on increasing nodes ([K], or [V, K] per voxel): mid-point
    CDF, linear between nodes."""
    nodes = np.broadcast_to(nodes, marg.shape)
    cdf = np.cumsum(marg, axis=1) - 0.5 * marg
    rows = np.arange(len(marg))
    last = marg.shape[1] - 1
    result = []
    for q in qs:
        k = np.clip((cdf < q).sum(1), 1, last)
        c0, c1 = cdf[rows, k - 1], cdf[rows, k]
        t = np.clip((q - c0) / np.maximum(c1 - c0, 1e-300), 0.0, 1.0)
        val = nodes[rows, k - 1] + t * (nodes[rows, k] - nodes[rows, k - 1])
        result.append(np.where(cdf[:, 0] >= q, nodes[:, 0], np.where(cdf[:, -1] <= q, nodes[:, last], val)))
    return result


def posterior_ivim(signals, b_values, sigma=None, grid: IvimGrid | None = None) -> dict:
    """Grid posterior of IVIM for signals [V, M] at b [M] (s/mm²); sigma: noise SD per voxel [V] in the
    signals' units, or None (integrated out). Returns per-voxel arrays fV, D, Dstar (posterior means; D* the
    geometric one) and S0, each with '_sd', and for fV, D, Dstar '_ci95lo', '_ci95hi', '_contraction'.
    Non-finite or all-zero voxels give NaN."""
    y = np.atleast_2d(np.asarray(signals, float))
    grid = grid or IvimGrid(b_values)
    n_v = len(y)
    ok = np.all(np.isfinite(y), axis=1) & (np.abs(y).sum(1) > 0)
    sig2 = np.full(n_v, -1.0) if sigma is None else np.broadcast_to(np.asarray(sigma, float), (n_v,)) ** 2
    sig2 = np.where(np.isfinite(sig2) & (sig2 > 0), sig2, -1.0)
    out = {k: np.full(n_v, np.nan) for k in ("fV", "D", "Dstar", "S0", "S0_sd")}
    for k in ("fV", "D", "Dstar"):
        for s in ("_sd", "_ci95lo", "_ci95hi", "_contraction"):
            out[k + s] = np.full(n_v, np.nan)
    idx = np.flatnonzero(ok)
    for start in range(0, idx.size, CHUNK):
        sel = idx[start:start + CHUNK]
        summary = np.zeros((sel.size, _N_SUMMARY))
        d_fine = np.zeros((sel.size, grid.n_fine))
        ls_fine = np.zeros((sel.size, grid.dstar.size))
        md = np.zeros((sel.size, grid.n_fine))
        ms = np.zeros((sel.size, grid.dstar.size))
        _posterior_kernel(np.ascontiguousarray(y[sel]), grid.b, grid.d, grid.e_d, grid.g11, grid.g12, grid.dstar,
                          grid.e_s, grid.g22, grid.prior_s, np.ascontiguousarray(sig2[sel]), summary, d_fine, ls_fine, md, ms)
        moments = {"fV": (summary[:, _F], summary[:, _F + 1] + summary[:, _VF]),
                   "D": ((md * d_fine).sum(1), (md * d_fine ** 2).sum(1)),
                   "Dstar": ((ms * ls_fine).sum(1), (ms * ls_fine ** 2).sum(1)),
                   "S0": (summary[:, _S0], summary[:, _S0 + 1])}
        marginals = {"D": (md, d_fine), "Dstar": (ms, ls_fine)}
        for k, (m1, m2) in moments.items():
            var = np.maximum(m2 - m1 ** 2, 0.0)
            out[k][sel] = np.exp(m1) if k == "Dstar" else m1
            out[k + "_sd"][sel] = np.sqrt(var) * (out[k][sel] if k == "Dstar" else 1.0)  # delta method for D*
            if k == "S0":
                continue
            if k == "fV":  # f varies within a node too: a normal interval on the total variance
                lo, hi = np.clip(m1 - Z95 * np.sqrt(var), 0.0, 1.0), np.clip(m1 + Z95 * np.sqrt(var), 0.0, 1.0)
            else:
                lo, hi = _quantiles(*marginals[k], (0.025, 0.975))
            if k == "Dstar":
                lo, hi = np.exp(lo), np.exp(hi)
            out[k + "_ci95lo"][sel], out[k + "_ci95hi"][sel] = lo, hi
            out[k + "_contraction"][sel] = np.clip(1.0 - var / grid.prior_var[k], 0.0, 1.0)
    return out
