"""Dictionary (simulation-informed) fitting: batched grid search + bounded nonlinear refinement.

For each voxel with normalised measurements m_k (k = 1..M) and noise floor nf_k, the objective is

    f(p) = mean_k (m_k - sqrt(s_k(p)² + nf_k²))² + w·pen(p)

(offset-Gaussian noise floor, likelihood.py), pen the L1 or L2 distance of the range-normalised
parameters from the range centre. s(p) is the dictionary's signal: exact at the entries for the grid
search, and a thin-plate-spline surrogate with a degree-1 polynomial (the reference surrogate of the
published tool) for the refinement, which is a projected Levenberg-Marquardt run on all voxels of a
chunk at once with the surrogate's analytic Jacobian. No per-voxel Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import solve

from ..dictionary import Dictionary
from .likelihood import (expected_signal, information_criteria, log_likelihood,
                         log_likelihood_unknown_sigma, noise_floor)

#: Exit codes of the fit (published convention): 1 fitted, 0 background, -1 failed / invalid data.
EXIT_OK, EXIT_BACKGROUND, EXIT_FAILED = 1, 0, -1


class ThinPlateSurrogate:
    """Smooth surrogate s(x) of the dictionary: thin-plate spline φ(r) = r² log r + degree-1 polynomial.

    x are parameters normalised to [0, 1] by the dictionary ranges. Fitted with smoothing λ:
    (Φ + λI) w + Q a = S, Qᵀ w = 0 (Q = [1, x]); entries with identical parameters are averaged
    first, so λ = 0 interpolates. Evaluation and its Jacobian are batched over points.
    """

    def __init__(self, centres: np.ndarray, values: np.ndarray, smoothing: float = 1.0):
        centres, inverse = np.unique(np.asarray(centres, float), axis=0, return_inverse=True)
        inverse = inverse.ravel()
        counts = np.bincount(inverse, minlength=len(centres)).astype(float)
        vals = np.zeros((len(centres), values.shape[1]))
        np.add.at(vals, inverse, np.asarray(values, float))
        vals /= counts[:, None]
        k, p = centres.shape
        phi = self._phi(self._sqdist(centres, centres))
        q = np.hstack([np.ones((k, 1)), centres])
        lhs = np.zeros((k + p + 1, k + p + 1))
        lhs[:k, :k] = phi + smoothing * np.eye(k)
        lhs[:k, k:] = q
        lhs[k:, :k] = q.T
        rhs = np.vstack([vals, np.zeros((p + 1, vals.shape[1]))])
        coef = solve(lhs, rhs, assume_a="sym")
        self.centres, self.weights, self.poly = centres, coef[:k], coef[k:]
        self.smoothing = smoothing
        self._c2 = np.sum(centres**2, axis=1)

    @staticmethod
    def _sqdist(x, c):
        return np.maximum(np.sum(x**2, 1)[:, None] + np.sum(c**2, 1)[None, :] - 2 * x @ c.T, 0.0)

    @staticmethod
    def _phi(r2):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(r2 > 0, 0.5 * r2 * np.log(r2), 0.0)

    def __call__(self, x: np.ndarray, jacobian: bool = False):
        """s(x) [V, M]; with jacobian=True also ∂s/∂x [V, M, P]."""
        x = np.atleast_2d(np.asarray(x, float))
        r2 = np.maximum(np.sum(x**2, 1)[:, None] + self._c2[None, :] - 2 * x @ self.centres.T, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            logr2 = np.where(r2 > 0, np.log(r2), 0.0)
        s = (0.5 * r2 * logr2) @ self.weights + self.poly[0] + x @ self.poly[1:]
        if not jacobian:
            return s
        g = np.where(r2 > 0, logr2 + 1.0, 0.0)  # ∇φ = (2 log r + 1)(x - c) = (log r² + 1)(x - c)
        gw = g @ self.weights                    # Σ_k g_vk w_km
        jac = np.empty(s.shape + (x.shape[1],))
        for j in range(x.shape[1]):
            jac[:, :, j] = x[:, j:j + 1] * gw - (g * self.centres[None, :, j]) @ self.weights + self.poly[1 + j]
        return s, jac


@dataclass
class DictionaryFit:
    """Per-voxel results: parameter maps (physical units) and diagnostics, shaped like the input."""

    params: dict
    exitcode: np.ndarray
    fobj: np.ndarray
    loglik: np.ndarray
    aic: np.ndarray
    bic: np.ndarray
    names: list
    units: dict
    info: dict = field(default_factory=dict)

    def maps(self) -> dict:
        """All maps by name: the parameters, then exitcode, fobj, loglik, aic, bic."""
        out = dict(self.params)
        out.update(exitcode=self.exitcode, fobj=self.fobj, loglik=self.loglik, aic=self.aic, bic=self.bic)
        return out


class DictionaryModel:
    """Histo-μSim-style dictionary model for one (matched) protocol.

    dictionary: signals on exactly the measurements to be fitted (Dictionary.match).
    n_averages: N of likelihood.py (the σ map refers to data magnitude-averaged over N volumes).
    regularisation: (norm, weight) with norm 1 or 2 and weight >= 0 (0: none).
    bounds: {name: (lo, hi)} in physical units, default the dictionary's range.
    smoothing: surrogate smoothing λ (range-normalised parameters); max_iter: LM iterations.
    """

    def __init__(self, dictionary: Dictionary, n_averages: float = 1.0, regularisation=(2, 0.0),
                 bounds: dict | None = None, smoothing: float = 1e-3, max_iter: int = 60,
                 chunk_size: int = 1000):
        self.dictionary = dictionary
        self.names = list(dictionary.names)
        self.n_averages = float(n_averages)
        norm, weight = regularisation
        if norm not in (1, 2) or weight < 0:
            raise ValueError("regularisation is (1 or 2, weight >= 0)")
        self.reg_norm, self.reg_weight = int(norm), float(weight)
        self.lo, self.hi = dictionary.ranges()
        span = np.where(self.hi > self.lo, self.hi - self.lo, 1.0)
        self.span = span
        lo_b, hi_b = np.zeros(len(self.names)), np.ones(len(self.names))
        for name, (a, b) in (bounds or {}).items():
            j = self.names.index(name)
            lo_b[j], hi_b[j] = (a - self.lo[j]) / span[j], (b - self.lo[j]) / span[j]
        self.bounds_norm = (lo_b, hi_b)
        self.entries_norm = (dictionary.params - self.lo) / span
        self.smoothing = float(smoothing)
        self.max_iter = int(max_iter)
        self.chunk_size = int(chunk_size)
        self._surrogate = None
        self.n_averaged = dictionary.protocol.n_averaged.astype(float)

    @property
    def surrogate(self) -> ThinPlateSurrogate:
        if self._surrogate is None:
            self._surrogate = ThinPlateSurrogate(self.entries_norm, self.dictionary.signals, self.smoothing)
        return self._surrogate

    # ---- objective pieces ------------------------------------------------------------------------
    def _penalty(self, x):
        if self.reg_weight == 0:
            return np.zeros(x.shape[0]), np.zeros_like(x), np.zeros_like(x)
        u = x - 0.5
        if self.reg_norm == 2:
            return self.reg_weight * np.sum(u**2, 1), 2 * self.reg_weight * u, np.full_like(x, 2 * self.reg_weight)
        eps = 1e-3
        a = np.sqrt(u**2 + eps**2)  # smoothed |u| (Charbonnier) for the derivatives
        return self.reg_weight * np.sum(np.abs(u), 1), self.reg_weight * u / a, self.reg_weight / a

    def grid_search(self, data, floor, chunk_entries: int = 4096, max_bytes: float = 64e6):
        """Best dictionary entry per voxel: (index [V], fobj [V]). data, floor: [V, M]."""
        sig = self.dictionary.signals.astype(np.float64)
        v, m = data.shape
        inside = np.all((self.entries_norm >= self.bounds_norm[0] - 1e-12) &
                        (self.entries_norm <= self.bounds_norm[1] + 1e-12), axis=1)
        pen = self._penalty(self.entries_norm)[0] + np.where(inside, 0, np.inf)
        best = np.zeros(v, dtype=np.int64)
        best_f = np.full(v, np.inf)
        no_floor = not np.any(floor)
        step_v = max(1, int(max_bytes // (8 * m * min(chunk_entries, len(sig)))))
        for e0 in range(0, len(sig), chunk_entries):
            s = sig[e0:e0 + chunk_entries]
            for v0 in range(0, v, step_v):
                d = data[v0:v0 + step_v]
                if no_floor:  # ||m - s||² by BLAS
                    f = (np.sum(d**2, 1)[:, None] - 2 * d @ s.T + np.sum(s**2, 1)[None, :]) / m
                else:
                    g = expected_signal(s[None, :, :], floor[v0:v0 + step_v, None, :])
                    f = np.mean((d[:, None, :] - g) ** 2, axis=2)
                f += pen[None, e0:e0 + chunk_entries]
                j = np.argmin(f, axis=1)
                fj = f[np.arange(len(j)), j]
                better = fj < best_f[v0:v0 + step_v]
                best[v0:v0 + step_v][better] = j[better] + e0
                best_f[v0:v0 + step_v][better] = fj[better]
        return best, best_f

    def _objective(self, x, data, floor):
        """f, residuals r, expected g and s at normalised x (surrogate), with Jacobian of r."""
        s, js = self.surrogate(x, jacobian=True)
        g = expected_signal(s, floor)
        r = data - g
        dg_ds = np.divide(s, g, out=np.ones_like(s), where=g > 0)
        jr = -dg_ds[:, :, None] * js
        pen, dpen, hpen = self._penalty(x)
        f = np.mean(r**2, 1) + pen
        return f, r, jr, dpen, hpen

    def refine(self, x0, data, floor):
        """Projected Levenberg-Marquardt from x0 (normalised) on all voxels at once: (x, f)."""
        v, m = data.shape
        lo, hi = self.bounds_norm
        x = np.clip(x0, lo, hi)
        f, r, jr, dpen, hpen = self._objective(x, data, floor)
        lam = np.full(v, 1e-3)
        active = np.isfinite(f)
        eye = np.eye(x.shape[1])
        for _ in range(self.max_iter):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            J, R = jr[idx], r[idx]
            grad = np.einsum("vmp,vm->vp", J, R) + 0.5 * m * dpen[idx]
            hess = np.einsum("vmp,vmq->vpq", J, J) + 0.5 * m * hpen[idx][:, :, None] * eye
            diag = np.einsum("vpp->vp", hess)
            damped = hess + lam[idx, None, None] * (eye * (diag[:, :, None] + 1e-9))
            step = -np.linalg.solve(damped, grad[:, :, None])[:, :, 0]
            xn = np.clip(x[idx] + step, lo, hi)
            fn, rn, jrn, dpn, hpn = self._objective(xn, data[idx], floor[idx])
            ok = np.isfinite(fn) & (fn < f[idx])
            acc = idx[ok]
            rel = np.where(ok, (f[idx] - fn) / np.maximum(f[idx], 1e-30), 0.0)
            moved = np.max(np.abs(xn - x[idx]), axis=1)
            x[acc], f[acc], r[acc], jr[acc] = xn[ok], fn[ok], rn[ok], jrn[ok]
            dpen[acc], hpen[acc] = dpn[ok], hpn[ok]
            lam[idx] = np.where(ok, lam[idx] / 3, lam[idx] * 4)
            done = (ok & ((rel < 1e-10) | (moved < 1e-7))) | (lam[idx] > 1e8)
            active[idx[done]] = False
        return x, f

    # ---- public API -----------------------------------------------------------------------------
    def fit(self, data, mask=None, sigma=None, progress=None) -> DictionaryFit:
        """Fit every voxel in ``mask``.

        data: [..., M] normalised signals on the dictionary's measurements. mask: [...] bool
        (default all). sigma: normalised noise σ, [...] or [..., M]; voxels whose σ is not finite and
        positive fall back to plain least squares. progress: optional callable(n_voxels_done).
        """
        data = np.asarray(data, dtype=np.float64)
        shape, m = data.shape[:-1], data.shape[-1]
        if m != len(self.dictionary.protocol):
            raise ValueError(f"{m} measurements for a dictionary of {len(self.dictionary.protocol)}")
        flat = data.reshape(-1, m)
        mask = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
        if mask.shape != shape:
            raise ValueError(f"mask {mask.shape} does not match data {shape}")
        if sigma is not None:
            sigma = np.broadcast_to(np.asarray(sigma, float).reshape(shape + (-1,)), shape + (m,)).reshape(-1, m)
        in_mask = mask.ravel()
        valid = in_mask & np.all(np.isfinite(flat), axis=1)
        if sigma is not None:
            valid &= ~np.any(np.isinf(sigma), axis=1)  # NaN σ -> least squares
        p = len(self.names)
        n_vox = flat.shape[0]
        params = np.zeros((n_vox, p))
        fobj = np.zeros(n_vox)
        loglik = np.zeros(n_vox)
        exitcode = np.where(in_mask, EXIT_FAILED, EXIT_BACKGROUND).astype(np.int8)
        params[in_mask & ~valid] = np.nan
        fobj[in_mask & ~valid] = np.nan
        loglik[in_mask & ~valid] = np.nan
        todo = np.flatnonzero(valid)
        for c0 in range(0, todo.size, self.chunk_size):
            idx = todo[c0:c0 + self.chunk_size]
            d = flat[idx]
            if sigma is None:
                sig = np.zeros_like(d)
            else:
                sig = np.where(np.isfinite(sigma[idx]) & (sigma[idx] > 0), sigma[idx], 0.0)
            floor = noise_floor(sig, self.n_averages)
            best, f_grid = self.grid_search(d, floor)
            x, f = self.refine(self.entries_norm[best].copy(), d, floor)
            worse = ~(f <= f_grid)  # the surrogate never beat the exact entry: keep the entry
            x[worse] = self.entries_norm[best[worse]]
            f[worse] = f_grid[worse]
            params[idx] = self.lo + x * self.span
            fobj[idx] = f
            loglik[idx] = self._loglik(x, d, sig, worse, best)
            ok = np.all(np.isfinite(params[idx]), axis=1) & np.isfinite(f)
            exitcode[idx] = np.where(ok, EXIT_OK, EXIT_FAILED)
            params[idx[~ok]] = np.nan
            if progress is not None:
                progress(idx.size)
        aic, bic = information_criteria(loglik, p, m)
        aic = np.where(exitcode == EXIT_BACKGROUND, 0.0, aic)
        bic = np.where(exitcode == EXIT_BACKGROUND, 0.0, bic)
        return DictionaryFit({n: params[:, j].reshape(shape) for j, n in enumerate(self.names)},
                             exitcode.reshape(shape), fobj.reshape(shape), loglik.reshape(shape),
                             aic.reshape(shape), bic.reshape(shape), self.names, dict(self.dictionary.units),
                             {"n_fitted": int(todo.size), "n_invalid": int((in_mask & ~valid).sum())})

    def _loglik(self, x, d, sig, use_entry, best):
        s = self.surrogate(x)
        s[use_entry] = self.dictionary.signals[best[use_entry]]
        floor = noise_floor(sig, self.n_averages)
        r = d - expected_signal(s, floor)
        m = d.shape[1]
        has_sigma = np.all(sig > 0, axis=1)
        sd = sig * np.sqrt(self.n_averages) / np.sqrt(self.n_averaged)[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            ll_known = log_likelihood(np.sum((r / sd) ** 2, 1), np.sum(np.log(sd**2), 1), m)
        ll_unknown = log_likelihood_unknown_sigma(np.sum(r**2, 1), m)
        return np.where(has_sigma, ll_known, ll_unknown)
