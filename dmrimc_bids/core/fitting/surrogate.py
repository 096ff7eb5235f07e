"""Smooth surrogates s(p) of a dictionary for the refinement: thin-plate splines (TPS).

A TPS model is φ(r) = r² log r on centres plus a degree-1 polynomial, fitted with smoothing λ:
(Φ + λI) w + Q a = S, Qᵀ w = 0 with Q = [1, z - origin]. Entries with identical parameters are
averaged first, so λ = 0 interpolates.

- ``global``: one TPS on all entries (the published tool's reference surrogate, there on raw
  parameters with smoothing 1; here on coordinates normalised by the parameter ranges). Exact but
  every evaluation costs O(entries).
- ``local``: one small TPS per entry on its K nearest entries, in coordinates scaled by the grid step
  of each parameter (range / (number of distinct values - 1)), so a neighbourhood spans about the
  same number of steps in every direction. An evaluation costs O(K); the refinement uses the model of
  the entry nearest to the current estimate and stays inside that model's neighbourhood box
  (dictfit.py re-anchors when the estimate reaches another entry's cell).

Both are a :class:`TPSStack`, the arrays the numba kernels (kernels.py) evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange
from scipy.spatial import cKDTree

from . import kernels


def unique_entries(coords: np.ndarray, signals: np.ndarray):
    """Average the signals of entries with identical coordinates: (coords_u, signals_u, inverse)."""
    coords_u, inverse = np.unique(np.asarray(coords, float), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    counts = np.bincount(inverse, minlength=len(coords_u)).astype(float)
    sig_u = np.zeros((len(coords_u), signals.shape[1]))
    np.add.at(sig_u, inverse, np.asarray(signals, float))
    return coords_u, sig_u / counts[:, None], inverse


def grid_steps(params: np.ndarray) -> np.ndarray:
    """Mean spacing of the distinct values of each parameter (range/(n_distinct - 1); 1 if constant)."""
    out = np.ones(params.shape[1])
    for j in range(params.shape[1]):
        u = np.unique(params[:, j])
        if u.size > 1:
            out[j] = (u[-1] - u[0]) / (u.size - 1)
    return out


#: Ridge on the TPS polynomial block (regularises rank-deficient neighbourhoods; negligible otherwise).
POLY_RIDGE = 1e-9


def _phi(r2):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r2 > 0, 0.5 * r2 * np.log(np.where(r2 > 0, r2, 1.0)), 0.0)


def _fit_tps(centres, values, origin, smoothing, valid=None):
    """Batched TPS fit. centres [B, K, d], values [B, K, m], origin [B, d], valid [B, K] (padding
    slots get zero weight) -> (weights [B, K, m], poly [B, d+1, m])."""
    b, k, d = centres.shape
    valid = np.ones((b, k), bool) if valid is None else valid
    diff = centres[:, :, None, :] - centres[:, None, :, :]
    both = valid[:, :, None] & valid[:, None, :]
    lhs = np.zeros((b, k + d + 1, k + d + 1))
    lhs[:, :k, :k] = np.where(both, _phi(np.sum(diff**2, axis=-1)), 0.0) + smoothing * np.eye(k)
    lhs[:, :k, :k] += np.eye(k) * (~valid)[:, :, None] * (1.0 - smoothing)  # padding: w = 0
    q = np.concatenate([np.ones((b, k, 1)), centres - origin[:, None, :]], axis=2) * valid[:, :, None]
    lhs[:, :k, k:] = q
    lhs[:, k:, :k] = np.swapaxes(q, 1, 2)
    # a tiny ridge on the polynomial block keeps the system regular when a neighbourhood spans fewer
    # than d+1 affinely independent points (e.g. two substrates whose fin and vCS move together)
    lhs[:, k:, k:] = -POLY_RIDGE * np.eye(d + 1)
    rhs = np.concatenate([values * valid[:, :, None], np.zeros((b, d + 1, values.shape[2]))], axis=1)
    coef = np.linalg.solve(lhs, rhs)
    return coef[:, :k], coef[:, k:]


@njit(cache=True, parallel=True)
def _side_neighbours(coords):
    """[n, 2d]: for every entry and parameter j, the nearest entry with a lower (column 2j) and a
    higher (2j + 1) value of j; -1 where there is none."""
    n, d = coords.shape
    out = np.full((n, 2 * d), -1, dtype=np.int64)
    for i in prange(n):
        best = np.full(2 * d, np.inf)
        for e in range(n):
            r2 = 0.0
            for j in range(d):
                t = coords[e, j] - coords[i, j]
                r2 += t * t
            for j in range(d):
                t = coords[e, j] - coords[i, j]
                col = 2 * j if t < -1e-12 else (2 * j + 1 if t > 1e-12 else -1)
                if col >= 0 and r2 < best[col]:
                    best[col] = r2
                    out[i, col] = e
    return out


def neighbourhoods(coords: np.ndarray, n_neighbours: int):
    """Indices [U, K'] of each entry's n_neighbours nearest entries plus, for every parameter, the
    nearest entry below and above it in that parameter (so every neighbourhood spans every free
    direction), padded with -1."""
    n = len(coords)
    k = min(n_neighbours, n)
    near = cKDTree(coords).query(coords, k=k)[1].reshape(n, k)
    allidx = np.sort(np.concatenate([near, _side_neighbours(coords)], axis=1), axis=1)
    dup = np.zeros(allidx.shape, bool)
    dup[:, 1:] = allidx[:, 1:] == allidx[:, :-1]
    allidx[dup] = -1
    out = np.take_along_axis(allidx, np.argsort(allidx < 0, axis=1, kind="stable"), axis=1)  # padding last
    return out[:, np.any(out >= 0, axis=0)]


@dataclass
class TPSStack:
    """A stack of TPS models in scaled coordinates z, the form kernels.py evaluates.

    centres [A, K, d], weights [A, K, M], poly [A, d+1, M], origin [A, d]; box_lo/box_hi [A, d]:
    the region where model a is trusted; model_of_entry [U]: the model of each unique entry, whose
    coordinates are entries [U, d]; model_of_input [N]: the model of each row given to the build."""

    centres: np.ndarray
    weights: np.ndarray
    poly: np.ndarray
    origin: np.ndarray
    box_lo: np.ndarray
    box_hi: np.ndarray
    entries: np.ndarray
    model_of_entry: np.ndarray
    model_of_input: np.ndarray
    kind: str
    smoothing: float

    @property
    def n_neighbours(self) -> int:
        return self.centres.shape[1]

    def nearest_model(self, z: np.ndarray) -> np.ndarray:
        """Model of the entry nearest to each point z [V, d]."""
        if self.kind == "global":
            return np.zeros(len(z), dtype=np.int64)
        if not hasattr(self, "_tree"):  # entries inside the bounds only (their boxes are not empty)
            ok = np.all((self.box_lo - 1e-9 <= self.entries) & (self.entries <= self.box_hi + 1e-9), axis=1)
            self._usable = np.flatnonzero(ok[self.model_of_entry])
            self._tree = cKDTree(self.entries[self._usable])
        return self.model_of_entry[self._usable[self._tree.query(z)[1]]]

    def __call__(self, z: np.ndarray, model=None, jacobian: bool = False):
        """s(z) [V, M] (and ∂s/∂z [V, M, d]) on the given models (default: nearest)."""
        z = np.ascontiguousarray(np.atleast_2d(z), dtype=float)
        model = self.nearest_model(z) if model is None else np.asarray(model, np.int64)
        v, m, d = len(z), self.weights.shape[2], z.shape[1]
        s, jt, cost = np.empty((v, m)), np.empty((v, d, m)), np.empty(v)
        zeros = np.zeros((v, m))
        kernels.evaluate(zeros, np.zeros(m), np.ones((v, m)), zeros, np.zeros(v, bool), z, model, self.centres,
                         self.weights, self.poly, self.origin, np.ones(d), 2, 0.0, s, jt, cost)
        return (s, np.swapaxes(jt, 1, 2)) if jacobian else s


def build_global(coords: np.ndarray, signals: np.ndarray, smoothing: float, lo, hi) -> TPSStack:
    """One TPS on all (unique) entries; trusted everywhere inside [lo, hi]."""
    c, s, _ = unique_entries(coords, signals)
    origin = c.mean(axis=0)[None]
    zero = np.zeros(len(coords), dtype=np.int64)
    w, p = _fit_tps(c[None], s[None], origin, smoothing)
    return TPSStack(c[None], w, p, origin, np.asarray(lo, float)[None], np.asarray(hi, float)[None],
                    c, np.zeros(len(c), dtype=np.int64), zero, "global", smoothing)


def build_local(coords: np.ndarray, signals: np.ndarray, smoothing: float, lo, hi,
                n_neighbours: int = 32, batch: int = 256) -> TPSStack:
    """One TPS per unique entry on its neighbourhood (:func:`neighbourhoods`); trusted in the
    neighbourhood's bounding box ∩ [lo, hi]."""
    c, s, inverse = unique_entries(coords, signals)
    n, d = c.shape
    nbr = neighbourhoods(c, max(int(n_neighbours), d + 2))
    valid = nbr >= 0
    idx = np.where(valid, nbr, np.arange(n)[:, None])
    cen = np.where(valid[:, :, None], c[idx], c[:, None, :])  # padding sits on the entry (weight 0)
    weights = np.empty((n, nbr.shape[1], s.shape[1]))
    poly = np.empty((n, d + 1, s.shape[1]))
    for b0 in range(0, n, batch):
        sl = slice(b0, b0 + batch)
        weights[sl], poly[sl] = _fit_tps(cen[sl], s[idx[sl]], c[sl], smoothing, valid[sl])
    box_lo = np.maximum(cen.min(axis=1), np.asarray(lo, float)[None])
    box_hi = np.minimum(cen.max(axis=1), np.asarray(hi, float)[None])
    box_hi = np.maximum(box_hi, box_lo)
    return TPSStack(np.ascontiguousarray(cen), weights, poly, c.copy(), box_lo, box_hi, c,
                    np.arange(n, dtype=np.int64), inverse.astype(np.int64), "local", smoothing)
