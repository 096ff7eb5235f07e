"""Bayesian IVIM: the posterior of (f, D, D*) on a grid, amplitudes projected out (numba, voxels in parallel).

Model of one voxel's signal at b [s/mm²] (any scale; S0 is free, as in the OSIPI convention):

    S(b) = a e^{-b D} + c e^{-b D*},   a = S0 (1 - f) >= 0,  c = S0 f >= 0,   D < D*.

For every node (D_i, D*_j) of a grid (D linear on D_BOUNDS, D* geometric on DSTAR_BOUNDS; the OSIPI
default bounds) the two amplitudes are the non-negative least-squares solution (variable projection: a 2x2
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
from numba import njit, prange

#: OSIPI default bounds: D [0, 5] µm²/ms (0-0.005 mm²/s), D* [5, 200] µm²/ms (0.005-0.2 mm²/s).
D_BOUNDS = (0.0, 5.0)
DSTAR_BOUNDS = (5.0, 200.0)
#: Grid nodes along D (linear) and D* (geometric).
N_D, N_DSTAR = 61, 33
#: z of the two-sided 95 % interval.
Z95 = 1.959963984540054
#: Voxels per call of the kernel (bounds the marginals' memory: chunk x (N_D + N_DSTAR) doubles).
CHUNK = 8192
#: Summary columns of the kernel: first and second moments of f and S0, mean conditional variance of f.
_F, _S0, _VF, _N_SUMMARY = 0, 2, 4, 5


@njit(cache=True, parallel=True)
def _posterior_kernel(y, e_d, e_s, pair_d, pair_s, g11, g22, g12, prior_w, sigma2, summary, marg_d, marg_s):
    """Grid posterior per voxel. y [V, M]; e_d [N_D, M], e_s [N_S, M] the basis signals; pair_d/pair_s [P]
    the nodes' indices; g11, g22, g12 [P] their Gram matrices; prior_w [P] prior weights; sigma2 [V] (<= 0:
    σ integrated out, the weight (RSS_min/RSS)^((M-2)/2) then by products and one sqrt, no log or exp).
    Writes summary [V, _N_SUMMARY] (moments of f and S0, the mean conditional variance of f) and
    marg_d [V, N_D], marg_s [V, N_S], the posterior marginals of D and D* (zero-filled by the caller)."""
    n_v, m = y.shape
    n_p = pair_d.size
    n_d, n_s = e_d.shape[0], e_s.shape[0]
    n_int, half = (m - 2) // 2, (m - 2) % 2 == 1
    for v in prange(n_v):
        u = np.empty(n_d)
        w = np.empty(n_s)
        rss_p = np.empty(n_p)
        amp_t = np.empty(n_p)
        amp_v = np.empty(n_p)
        yy = 0.0
        for k in range(m):
            yy += y[v, k] * y[v, k]
        for i in range(n_d):
            acc = 0.0
            for k in range(m):
                acc += y[v, k] * e_d[i, k]
            u[i] = acc
        for j in range(n_s):
            acc = 0.0
            for k in range(m):
                acc += y[v, k] * e_s[j, k]
            w[j] = acc
        rss_min = 1e300
        floor = 1e-18 * (yy + 1e-300)
        for p in range(n_p):
            a_in, c_in = u[pair_d[p]], w[pair_s[p]]
            det = g11[p] * g22[p] - g12[p] * g12[p]
            a = (g22[p] * a_in - g12[p] * c_in) / det
            c = (g11[p] * c_in - g12[p] * a_in) / det
            if c < 0.0:  # non-negative least squares: one amplitude at its bound
                c = 0.0
                a = max(a_in / g11[p], 0.0)
                rss = yy - a * a_in
            elif a < 0.0:
                a = 0.0
                c = c_in / g22[p]
                rss = yy - c * c_in
            else:
                rss = yy - a * a_in - c * c_in
            rss = max(rss, floor)
            rss_p[p] = rss
            amp_t[p] = a
            amp_v[p] = c
            if rss < rss_min:
                rss_min = rss
        known = sigma2[v] > 0
        s2 = sigma2[v] if known else rss_min / max(m - 4, 1)
        for q in range(_N_SUMMARY):
            summary[v, q] = 0.0
        total = 0.0
        for p in range(n_p):
            if known:
                wt = prior_w[p] * math.exp(-(rss_p[p] - rss_min) / (2.0 * sigma2[v]))
            else:
                r = rss_min / rss_p[p]
                wt = prior_w[p]
                for _ in range(n_int):
                    wt *= r
                if half:
                    wt *= math.sqrt(r)
            if wt < 1e-14:
                continue
            total += wt
            a, c = amp_t[p], amp_v[p]
            tot = a + c
            f = c / tot if tot > 0 else 0.0
            det = g11[p] * g22[p] - g12[p] * g12[p]
            da, dc = -f / max(tot, 1e-12), (1.0 - f) / max(tot, 1e-12)
            var_f = s2 * (da * da * g22[p] - 2.0 * da * dc * g12[p] + dc * dc * g11[p]) / det
            summary[v, _F] += wt * f
            summary[v, _F + 1] += wt * f * f
            summary[v, _VF] += wt * min(var_f, 0.25)
            summary[v, _S0] += wt * tot
            summary[v, _S0 + 1] += wt * tot * tot
            marg_d[v, pair_d[p]] += wt
            marg_s[v, pair_s[p]] += wt
        for q in range(_N_SUMMARY):
            summary[v, q] /= total
        for i in range(n_d):
            marg_d[v, i] /= total
        for j in range(n_s):
            marg_s[v, j] /= total


class IvimGrid:
    """The (D, D*) nodes with D < D* and their basis signals for b-values [s/mm²]; bounds in µm²/ms."""

    def __init__(self, b_values, d_bounds=D_BOUNDS, dstar_bounds=DSTAR_BOUNDS, n_d=N_D, n_dstar=N_DSTAR):
        b = np.asarray(b_values, float) * 1e-3
        self.d = np.linspace(*d_bounds, n_d)
        self.dstar = np.geomspace(*dstar_bounds, n_dstar)
        self.e_d = np.exp(-np.outer(self.d, b))
        self.e_s = np.exp(-np.outer(self.dstar, b))
        di, si = np.meshgrid(np.arange(n_d), np.arange(n_dstar), indexing="ij")
        keep = self.dstar[si.ravel()] > self.d[di.ravel()]
        self.pair_d, self.pair_s = di.ravel()[keep], si.ravel()[keep]
        e1, e2 = self.e_d[self.pair_d], self.e_s[self.pair_s]
        self.g11, self.g22, self.g12 = (e1 * e1).sum(1), (e2 * e2).sum(1), (e1 * e2).sum(1)
        #: prior weight of each node: flat in D and in sqrt(D*) (geometric nodes: weight ∝ sqrt(D*)), max 1
        self.prior_w = np.sqrt(self.dstar[self.pair_s] / self.dstar.max())
        ws = np.sqrt(self.dstar) / np.sqrt(self.dstar).sum()
        log_s = np.log(self.dstar)
        #: prior variances: f uniform on [0, 1], D flat on its nodes, log D* under the sqrt(D*) weights
        self.prior_var = {"fV": 1.0 / 12.0, "D": float(np.var(self.d)),
                          "Dstar": float(ws @ log_s ** 2 - (ws @ log_s) ** 2)}


def _quantiles(marg: np.ndarray, nodes: np.ndarray, qs) -> list:
    """Quantiles qs of discrete marginals [V, K] on increasing nodes [K] (mid-point CDF, linear between nodes)."""
    cdf = np.cumsum(marg, axis=1) - 0.5 * marg
    rows = np.arange(len(marg))
    result = []
    for q in qs:
        k = np.clip((cdf < q).sum(1), 1, nodes.size - 1)
        c0, c1 = cdf[rows, k - 1], cdf[rows, k]
        t = np.clip((q - c0) / np.maximum(c1 - c0, 1e-300), 0.0, 1.0)
        val = nodes[k - 1] + t * (nodes[k] - nodes[k - 1])
        result.append(np.where(cdf[:, 0] >= q, nodes[0], np.where(cdf[:, -1] <= q, nodes[-1], val)))
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
    log_s = np.log(grid.dstar)
    for start in range(0, idx.size, CHUNK):
        sel = idx[start:start + CHUNK]
        summary = np.zeros((sel.size, _N_SUMMARY))
        md = np.zeros((sel.size, grid.d.size))
        ms = np.zeros((sel.size, grid.dstar.size))
        _posterior_kernel(np.ascontiguousarray(y[sel]), grid.e_d, grid.e_s, grid.pair_d, grid.pair_s, grid.g11,
                          grid.g22, grid.g12, grid.prior_w, np.ascontiguousarray(sig2[sel]), summary, md, ms)
        moments = {"fV": (summary[:, _F], summary[:, _F + 1] + summary[:, _VF]),
                   "D": (md @ grid.d, md @ grid.d ** 2),
                   "Dstar": (ms @ log_s, ms @ log_s ** 2),
                   "S0": (summary[:, _S0], summary[:, _S0 + 1])}
        marginals = {"D": (md, grid.d), "Dstar": (ms, log_s)}
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
