"""Posterior-mean dictionary estimator: for low-dimensional, scattered dictionaries at low SNR.

With Gaussian noise of known σ (per voxel) and a flat prior over the dictionary entries k, the posterior
weight of entry k is w_k ∝ exp(-Σ_m (y_m - s_km)² / (2 σ²)); the estimate of a positive parameter is the
posterior mean of its logarithm (a geometric mean: velocities and branching span decades), its
uncertainty the posterior SD of the logarithm times the estimate (delta method). Without σ, σ² is the
maximum-likelihood value min_k Σ_m (y_m - s_km)² / M. This is the minimum-mean-square-error estimator
over the dictionary's own prior: it needs no surrogate (flow dictionaries are scattered, not gridded), and
it is what the vascular branch uses by default (the vascular signal S_V = S - S_T is a difference of
magnitudes, so its noise is Gaussian, not Rician).
"""

from __future__ import annotations

import numpy as np

from ..dictionary import Dictionary
from .dictfit import DictionaryFit, assemble_fit, estimate_placement
from .model import EXIT_BACKGROUND, EXIT_FAILED, EXIT_OK, Description, Model


#: Largest voxel x entry matrix of one posterior batch [elements] (~100 MB of float64 each).
POSTERIOR_BATCH_ELEMENTS = 12_000_000


def posterior_chunk(chunk_size: int, n_entries: int) -> int:
    """Voxels per posterior batch: at most chunk_size, 2000, and POSTERIOR_BATCH_ELEMENTS / entries."""
    return max(16, min(int(chunk_size), 2000, POSTERIOR_BATCH_ELEMENTS // max(int(n_entries), 1)))


#: Point estimates: the posterior mean (log scale for positive parameters) or the posterior median.
POINT_ESTIMATES = ("mean", "median")


class PosteriorModel(Model):
    """dictionary: signals on exactly the measurements to fit; chunk_size: voxels per batch (memory
    ~ chunk_size x entries x 8 bytes x 3); point: 'mean' or 'median' (see _Medians); bounds: {name:
    (lo, hi)} physical units, the flat prior's support (entries outside are dropped, Dictionary.within)."""

    def __init__(self, dictionary: Dictionary, chunk_size: int = 2000, point: str = "mean", bounds: dict | None = None):
        if point not in POINT_ESTIMATES:
            raise ValueError(f"point estimate {point!r} is not one of {POINT_ESTIMATES}")
        self.user_bounds = {k: tuple(v) for k, v in (bounds or {}).items()}
        dictionary = dictionary.within(self.user_bounds) if self.user_bounds else dictionary
        self.dictionary = dictionary
        self.names = list(dictionary.names)
        self.chunk_size = int(chunk_size)
        self.point = point
        p = dictionary.params
        self.log = np.all(p > 0, axis=0)
        self.values = np.where(self.log, np.log(np.where(p > 0, p, 1.0)), p)
        self.free = np.flatnonzero(np.ptp(p, axis=0) > 0)
        self._medians = _Medians(p) if point == "median" else None

    def fit(self, data, mask=None, sigma=None, progress=None) -> DictionaryFit:
        """data [..., M]; mask [...] bool; sigma [...] or [..., M] (its mean over M is used) or None."""
        given, given_sigma = data, sigma
        data = np.asarray(data, float)
        shape, m = data.shape[:-1], data.shape[-1]
        if m != len(self.dictionary.protocol):
            raise ValueError(f"{m} measurements for a dictionary of {len(self.dictionary.protocol)}")
        flat = data.reshape(-1, m)
        mask = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
        sig = None
        if sigma is not None:
            s = np.asarray(sigma, float)
            s = s.reshape(shape + (-1,)).mean(-1) if s.size != np.prod(shape) else s.reshape(shape)
            sig = s.ravel()
        in_mask = mask.ravel()
        valid = in_mask & np.all(np.isfinite(flat), axis=1)
        n_vox, p = flat.shape[0], len(self.names)
        params, sd = np.full((n_vox, p), np.nan), np.full((n_vox, p), np.nan)
        fobj, loglik = np.full(n_vox, np.nan), np.full(n_vox, np.nan)
        params[~in_mask], sd[~in_mask], fobj[~in_mask], loglik[~in_mask] = 0, 0, 0, 0
        exitcode = np.where(in_mask, EXIT_FAILED, EXIT_BACKGROUND).astype(np.int8)
        S = self.dictionary.signals.astype(np.float64)
        s2 = np.einsum("km,km->k", S, S)
        todo = np.flatnonzero(valid)
        for c0 in range(0, todo.size, self.chunk_size):
            idx = todo[c0:c0 + self.chunk_size]
            w, best, var = self._weights(flat[idx], S, s2, None if sig is None else sig[idx])
            mean = w @ self.values
            sdl = np.sqrt(np.maximum(w @ self.values ** 2 - mean ** 2, 0.0))
            est = np.where(self.log, np.exp(mean), mean)
            if self._medians is not None:
                est = self._medians.median(w)
            params[idx] = est
            sd[idx] = np.where(self.log, sdl * est, sdl)
            fobj[idx] = best / m
            loglik[idx] = -0.5 * (best / var + m * np.log(2 * np.pi * var))
            exitcode[idx] = EXIT_OK
            if progress is not None:
                progress(idx.size)
        lo, hi = self.dictionary.ranges()
        info = {"n_fitted": int(todo.size), "n_invalid": int((in_mask & ~valid).sum()),
                "estimator": "posterior median over the dictionary entries (interpolated between neighbouring "
                             "values)" if self.point == "median" else
                             "posterior mean over the dictionary entries (log scale for positive parameters)",
                "estimate_placement": estimate_placement(params[exitcode == EXIT_OK], self.dictionary,
                                                         [self.names[j] for j in self.free], lo, hi)}
        fit = assemble_fit(self.dictionary, self.free, shape, m, params, sd, exitcode, fobj, loglik, info)
        return fit.bind(self, given, given_sigma)

    def describe(self) -> Description:
        """Posterior median or mean over the entries, Gaussian likelihood, flat prior inside the bounds."""
        point = ("posterior median (interpolated between neighbouring values)" if self.point == "median"
                 else "posterior mean (geometric mean for positive parameters)")
        return Description(
            method=f"as the posterior {self.point} over the dictionary's entries (Gaussian likelihood with each "
                   "voxel's noise level, flat prior over the entries), with posterior standard deviations",
            parameters={"FitMethod": f"{point} over the dictionary's entries (Gaussian likelihood with the voxel's "
                                     "sigma, flat prior over the entries inside the bounds)",
                        "NoiseModel": "Gaussian", "Uncertainty": "desc-sd maps: posterior SD",
                        "Bounds": self.user_bounds or "dictionary range"})

    @staticmethod
    def _weights(y, S, s2, sig):
        """Posterior weights [V, K] of the entries, best squared distance [V] and the variance used [V]."""
        m = y.shape[1]
        d2 = np.maximum(np.einsum("vm,vm->v", y, y)[:, None] - 2 * y @ S.T + s2[None, :], 0.0)
        best = d2.min(1)
        var = best / m if sig is None else sig ** 2
        var = np.where(np.isfinite(var) & (var > 0), var, np.maximum(best / m, 1e-12))
        w = np.exp(-(d2 - best[:, None]) / (2 * var[:, None]))
        return w / w.sum(1, keepdims=True), best, var

    def predict(self, data, params=None, sigma=None) -> np.ndarray:
        """Posterior-mean signal [V, M] of the voxels data [V, M] (σ [V] or [V, M] normalised, or None);
        params is not used (the signature is shared with DictionaryModel.predict)."""
        y = np.atleast_2d(np.asarray(data, float))
        S = self.dictionary.signals.astype(np.float64)
        sig = None if sigma is None else np.asarray(sigma, float).reshape(len(y), -1).mean(1)
        return self._weights(y, S, np.einsum("km,km->k", S, S), sig)[0] @ S


class _Medians:
    """Posterior medians of every parameter from entry weights [V, K].

    A parameter's distinct values u_1 < ... < u_n carry the posterior masses p_i; mass p_i is spread
    evenly between the midpoints to its neighbours (u_1 and u_n are the ends), and the median is where
    that piecewise-linear distribution function reaches 1/2. It therefore moves continuously between
    the dictionary's values instead of jumping from node to node (no "steps" in the maps). The masses of
    all parameters come from one sparse product with the entries' value indicators (one pass over w)."""

    def __init__(self, params: np.ndarray):
        import scipy.sparse as sp

        self.edges, self.slices, cols, offset = [], [], [], 0
        for j in range(params.shape[1]):
            values, index = np.unique(params[:, j], return_inverse=True)
            self.edges.append(np.concatenate([values[:1], (values[1:] + values[:-1]) / 2, values[-1:]]))
            self.slices.append(slice(offset, offset + values.size))
            cols.append(offset + index.ravel())
            offset += values.size
        k = params.shape[0]
        rows = np.tile(np.arange(k), params.shape[1])
        self.indicator = sp.csr_matrix((np.ones(rows.size), (rows, np.concatenate(cols))), shape=(k, offset))

    def median(self, w: np.ndarray) -> np.ndarray:
        mass_all = np.asarray((self.indicator.T @ w.T).T)
        rows = np.arange(w.shape[0])
        out = np.empty((w.shape[0], len(self.edges)))
        for j, (edges, sl) in enumerate(zip(self.edges, self.slices)):
            mass = mass_all[:, sl]
            if mass.shape[1] == 1:
                out[:, j] = edges[0]
                continue
            cdf = np.cumsum(mass, axis=1)
            half = 0.5 * cdf[:, -1]
            i = np.argmax(cdf >= half[:, None], axis=1)
            below = np.where(i > 0, cdf[rows, i - 1], 0.0)
            frac = np.clip((half - below) / np.maximum(mass[rows, i], 1e-300), 0.0, 1.0)
            out[:, j] = edges[i] + frac * (edges[i + 1] - edges[i])
        return out
