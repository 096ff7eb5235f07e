"""Dictionary (simulation-informed) fitting: batched grid search + bounded nonlinear refinement.

For each voxel with normalised measurements m_k (k = 1..M) the objective is

    offset-Gaussian (default, as published)   f(p) = mean_k (m_k - sqrt(s_k(p)² + nf_k²))² + w·pen(p)
    Rician                                     f(p) = -mean_k log Rice(m_k | s_k(p), σ_k) + w·pen(p)

(noise floor nf and σ_k: likelihood.py; voxels without a noise map use plain least squares, nf = 0),
pen the L1 or L2 distance of the range-normalised parameters from the range centre.

1. Grid search: the exact offset-Gaussian cost of every dictionary entry for every voxel (numba,
   chunked); the best entry starts the refinement.
2. Refinement: projected Levenberg-Marquardt (Fisher scoring for the Rician likelihood) of every voxel
   of a chunk in parallel on a thin-plate-spline surrogate with its analytic Jacobian (surrogate.py):
   ``local`` (default: one TPS per entry on its nearest entries; the voxel moves to the model of the
   entry nearest to its estimate, at most ``max_rounds`` times) or ``global`` (the published tool's
   reference: one TPS on all entries).
3. If the surrogate optimum is not better than the best exact entry, the entry is kept.
4. Uncertainty: the Fisher/Laplace standard deviation sqrt(diag(I⁻¹)), I = Σ_k ∂g_k ∂g_kᵀ / σ_k² with g
   the expected measurement, at the estimate (σ_k² from the residuals where there is no noise map).

Every voxel is computed independently by the same sequence of operations, so results do not depend
on the number of threads or the chunk size. A GPU path (gpu.py) runs the same kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..dictionary import Dictionary
from . import kernels
from .likelihood import (Z95, expected_signal, information_criteria, log_likelihood,
                         log_likelihood_unknown_sigma, noise_floor, rician_log_likelihood)
from .model import EXIT_BACKGROUND, EXIT_FAILED, EXIT_OK, Description, Fit, Model, fit_plan, voxel_chunks, voxel_table
from .surrogate import TPSStack, build_global, build_local, grid_steps
#: The maximum-likelihood fit's likelihoods (likelihood.LIKELIHOODS).
NOISE_MODELS = ("offset-gaussian", "rician")
SURROGATES = ("local", "global")


@dataclass
class DictionaryFit(Fit):
    """Per-voxel results: parameter maps (physical units), the standard deviation of each fitted
    (not fixed) parameter, and diagnostics (the Fit of the dictionary estimators)."""

    params: dict
    sd: dict
    exitcode: np.ndarray
    fobj: np.ndarray
    loglik: np.ndarray
    aic: np.ndarray
    bic: np.ndarray
    names: list
    units: dict
    info: dict = field(default_factory=dict)
    ci95lo: dict = field(default_factory=dict)
    ci95hi: dict = field(default_factory=dict)
    contraction: dict = field(default_factory=dict)

    def uncertainty_maps(self) -> dict:
        """The 95 % interval bounds and the posterior contraction of each fitted parameter, by map name."""
        out = {f"{k}_ci95lo": v for k, v in self.ci95lo.items()}
        out.update({f"{k}_ci95hi": v for k, v in self.ci95hi.items()})
        out.update({f"{k}_contraction": v for k, v in self.contraction.items()})
        return out

    def diagnostics(self) -> dict:
        """exitcode, fobj, loglik, aic, bic."""
        return {"exitcode": self.exitcode, "fobj": self.fobj, "loglik": self.loglik, "aic": self.aic, "bic": self.bic}


def assemble_fit(dictionary: Dictionary, free, shape, n_meas, params, sd, exitcode, fobj, loglik,
                 info, model=None, data=None, sigma=None) -> DictionaryFit:
    """DictionaryFit from flat per-voxel arrays: maps reshaped to `shape`, SDs of the free parameters,
    AIC/BIC from the log-likelihood (0 in the background); model, data, σ: what made it and what it fitted."""
    names = list(dictionary.names)
    aic, bic = information_criteria(loglik, len(free), n_meas)
    aic = np.where(exitcode == EXIT_BACKGROUND, 0.0, aic)
    bic = np.where(exitcode == EXIT_BACKGROUND, 0.0, bic)
    return DictionaryFit({n: params[:, j].reshape(shape) for j, n in enumerate(names)},
                         {n: sd[:, j].reshape(shape) for j, n in enumerate(names) if j in free},
                         exitcode.reshape(shape), fobj.reshape(shape), loglik.reshape(shape),
                         aic.reshape(shape), bic.reshape(shape), names, dict(dictionary.units), info,
                         model=model, data=data, sigma=sigma)


def laplace_intervals(fit: DictionaryFit, dictionary: Dictionary, free, lo, hi) -> None:
    """The maximum-likelihood fit's 95 % intervals (estimate -/+ 1.96 Fisher SD, clipped to [lo, hi]) and
    contraction (1 - SD² / the entries' variance, in [0, 1]) of the free parameters, set on ``fit``."""
    for j in free:
        name = dictionary.names[j]
        est, sd = fit.params[name], fit.sd[name]
        fit.ci95lo[name] = np.clip(est - Z95 * sd, lo[j], hi[j])
        fit.ci95hi[name] = np.clip(est + Z95 * sd, lo[j], hi[j])
        prior = float(dictionary.params[:, j].var())
        fit.contraction[name] = np.clip(1 - sd ** 2 / prior, 0.0, 1.0) if prior > 0 else np.ones_like(sd)


#: An estimate within this fraction of a parameter's range of a value counts as sitting on it.
PLACEMENT_TOL = 1e-3


#: Bins of the estimates' histogram and points per bin of the chance share of estimate_placement.
PLACEMENT_BINS, PLACEMENT_GRID = 64, 400


def _on_node(v: np.ndarray, nodes: np.ndarray, tol: float) -> np.ndarray:
    """[len(v)] bool: v within tol of one of the sorted nodes."""
    pos = np.clip(np.searchsorted(nodes, v), 1, max(nodes.size - 1, 1))
    near = np.minimum(np.abs(v - nodes[pos - 1]), np.abs(v - nodes[np.minimum(pos, nodes.size - 1)]))
    return near <= tol


def estimate_placement(params: np.ndarray, dictionary: Dictionary, names, lo, hi) -> dict:
    """Per fitted parameter, the fraction of estimates (params [V, P], the dictionary's column order)
    that sit on one of the dictionary's values of that parameter (a "node"), the fraction that
    continuous estimates of the same histogram would put there by chance (a dense set of nodes covers
    much of the range: 128 substrates' fin values cover about a quarter of it), and the fraction at a
    bound [lo, hi]. An excess over chance, or many at a bound, shows a dictionary too coarse or too
    narrow for the data ("steps" in map histograms)."""
    out = {}
    for name in names:
        j = list(dictionary.names).index(name)
        v = params[:, j]
        v = v[np.isfinite(v)]
        span = max(float(hi[j] - lo[j]), 1e-12)
        nodes = np.unique(dictionary.params[:, j])
        if v.size == 0:
            out[name] = {"on_node": None, "on_node_chance": None, "at_bound": None, "n": 0}
            continue
        tol = PLACEMENT_TOL * span
        # chance: each histogram bin's share of estimates x the share of that bin within tol of a node
        grid = lo[j] + span * (np.arange(PLACEMENT_BINS * PLACEMENT_GRID) + 0.5) / (PLACEMENT_BINS * PLACEMENT_GRID)
        covered = _on_node(grid, nodes, tol).reshape(PLACEMENT_BINS, PLACEMENT_GRID).mean(1)
        share = np.histogram(np.clip(v, lo[j], hi[j]), PLACEMENT_BINS, (lo[j], lo[j] + span))[0] / v.size
        at_bound = (np.abs(v - lo[j]) <= tol) | (np.abs(v - hi[j]) <= tol)
        out[name] = {"on_node": round(float(np.mean(_on_node(v, nodes, tol))), 4),
                     "on_node_chance": round(float(share @ covered), 4),
                     "at_bound": round(float(np.mean(at_bound)), 4), "n": int(v.size)}
    return out


class DictionaryModel(Model):
    """Histo-μSim-style dictionary model for one (matched) protocol.

    dictionary: signals on exactly the measurements to be fitted (Dictionary.match).
    n_averages: N of likelihood.py (the σ map refers to data magnitude-averaged over N volumes).
    regularisation: (norm, weight) with norm 1 or 2 and weight >= 0 (0: none).
    bounds: {name: (lo, hi)} in physical units, default the dictionary's range.
    smoothing: surrogate smoothing λ; surrogate: 'local' or 'global'; n_neighbours: K of the local
    surrogate; noise: 'offset-gaussian' or 'rician' (likelihood.LIKELIHOODS); max_iter: LM iterations per round;
    max_rounds: re-anchoring rounds of the local surrogate; device: 'cpu', 'gpu' or 'auto'.
    """

    def __init__(self, dictionary: Dictionary, n_averages: float = 1.0, regularisation=(2, 0.0),
                 bounds: dict | None = None, smoothing: float = 1e-3, max_iter: int = 60,
                 chunk_size: int = 10000, surrogate: str = "local", n_neighbours: int = 32,
                 noise: str = "offset-gaussian", max_rounds: int = 4, device: str = "cpu"):
        self.dictionary = dictionary
        self.names = list(dictionary.names)
        self.n_averages = float(n_averages)
        norm, weight = regularisation
        if norm not in (1, 2) or weight < 0:
            raise ValueError("regularisation is (1 or 2, weight >= 0)")
        if noise not in NOISE_MODELS:
            raise ValueError(f"noise model {noise!r} is not one of {NOISE_MODELS}")
        if surrogate not in SURROGATES:
            raise ValueError(f"surrogate {surrogate!r} is not one of {SURROGATES}")
        self.reg_norm, self.reg_weight = int(norm), float(weight)
        self.user_bounds = {k: tuple(v) for k, v in (bounds or {}).items()}
        self.noise, self.surrogate_kind = noise, surrogate
        self.smoothing, self.n_neighbours = float(smoothing), int(n_neighbours)
        self.max_iter, self.max_rounds, self.chunk_size = int(max_iter), int(max_rounds), int(chunk_size)
        self.requested_device = device
        self.backend = _backend(device, "ml")
        self.device = "gpu" if self.backend is not kernels else "cpu"

        self.lo, self.hi = dictionary.ranges()
        self.span = np.where(self.hi > self.lo, self.hi - self.lo, 1.0)
        self.free = np.flatnonzero(self.hi > self.lo)  # fitted parameters (others are constant)
        steps = self.span if surrogate == "global" else grid_steps(dictionary.params)
        self.scale = steps[self.free]                  # z = (p - lo) / scale on the free parameters
        self.uscale = self.scale / self.span[self.free]  # u = z · uscale in [0, 1]
        lo_z, hi_z = np.zeros(self.free.size), self.span[self.free] / self.scale
        for name, (a, b) in (bounds or {}).items():
            j = self.names.index(name)
            if j in self.free:
                f = int(np.flatnonzero(self.free == j)[0])
                lo_z[f], hi_z[f] = (a - self.lo[j]) / self.scale[f], (b - self.lo[j]) / self.scale[f]
        self.bounds_z = (lo_z, hi_z)
        self.entries_z = (dictionary.params[:, self.free] - self.lo[self.free]) / self.scale
        self.n_averaged = dictionary.protocol.n_averaged.astype(float)
        self._surrogate = None
        self._grid = None

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Physical (lo, hi) of every parameter: the dictionary's ranges, narrowed by ``bounds``."""
        lo, hi = self.lo.copy(), self.hi.copy()
        lo[self.free] = self.lo[self.free] + self.bounds_z[0] * self.scale
        hi[self.free] = self.lo[self.free] + self.bounds_z[1] * self.scale
        return lo, hi

    # ---- pieces ----------------------------------------------------------------------------------
    @property
    def surrogate(self) -> TPSStack:
        """The refinement surrogate (built on first use)."""
        if self._surrogate is None:
            build = build_global if self.surrogate_kind == "global" else build_local
            kw = {} if self.surrogate_kind == "global" else {"n_neighbours": self.n_neighbours}
            self._surrogate = build(self.entries_z, self.dictionary.signals, self.smoothing,
                                    *self.bounds_z, **kw)
        return self._surrogate

    def _grid_arrays(self):
        if self._grid is None:
            lo, hi = self.bounds_z
            inside = np.all((self.entries_z >= lo - 1e-9) & (self.entries_z <= hi + 1e-9), axis=1)
            pen = np.empty(len(self.entries_z))
            kernels.penalties(np.ascontiguousarray(self.entries_z), self.uscale, self.reg_norm,
                              self.reg_weight, pen)
            pen[~inside] = np.inf
            sig = np.ascontiguousarray(self.dictionary.signals, dtype=np.float64)
            self._grid = (np.ascontiguousarray(sig.T), pen, sig)
        return self._grid

    def _noise_terms(self, sigma_chunk, m):
        """(weights [M], σ_k² [V, M], nf² [V, M], rician [V]) from the normalised σ of a chunk."""
        has = np.all(np.isfinite(sigma_chunk) & (sigma_chunk > 0), axis=1)
        sig = np.where(has[:, None], sigma_chunk, 0.0)
        flo2 = noise_floor(sig, self.n_averages) ** 2
        sig2 = np.where(has[:, None], sig**2 * self.n_averages / self.n_averaged[None, :], 1.0)
        rician = has & (self.noise == "rician")
        return np.full(m, 1.0 / m), np.ascontiguousarray(sig2), np.ascontiguousarray(flo2), rician, has

    def grid_search(self, data, floor):
        """Best dictionary entry per voxel: (index [V], cost [V]) (offset-Gaussian, floor nf [V, M])."""
        sig_t, pen, _ = self._grid_arrays()
        data = np.ascontiguousarray(data, dtype=np.float64)
        best, cost = np.empty(len(data), np.int64), np.empty(len(data))
        m = data.shape[1]
        self.backend.grid_search(data, np.full(m, 1.0 / m), np.ascontiguousarray(np.square(floor)),
                                 sig_t, pen, best, cost)
        return best, cost

    def _refine(self, data, w, sig2, flo2, rician, z, anchor):
        """Rounds of LM, re-anchoring the local surrogate to the entry nearest the estimate after each:
        (z, anchor, cost, iterations, status); cost is that of the last round's model."""
        sur = self.surrogate
        v = len(data)
        cost, iters, status = np.empty(v), np.zeros(v, np.int64), np.zeros(v, np.int64)
        todo = np.arange(v)
        for _ in range(max(1, self.max_rounds)):
            sub = (data[todo], sig2[todo], flo2[todo], rician[todo], z[todo], anchor[todo])
            c, it, st = np.empty(todo.size), iters[todo], np.empty(todo.size, np.int64)
            zz = np.ascontiguousarray(sub[4])
            self.backend.refine(sub[0], w, sub[1], sub[2], sub[3], zz, sub[5], sur.centres, sur.weights,
                                sur.poly, sur.origin, sur.box_lo, sur.box_hi, self.uscale, self.reg_norm,
                                self.reg_weight, self.max_iter, c, it, st)
            z[todo], cost[todo], iters[todo], status[todo] = zz, c, it, st
            new = sur.nearest_model(zz)
            moved = new != anchor[todo]
            anchor[todo[moved]] = new[moved]
            todo = todo[moved]
            if todo.size == 0:
                break
        return z, anchor, cost, iters, status

    # ---- public API -----------------------------------------------------------------------------
    def jit_kernels(self) -> list:
        from . import surrogate
        cpu = [kernels.grid_search, kernels.refine] if self.backend is kernels else []
        return cpu + [kernels.entry_cost, kernels.evaluate, kernels.penalties, surrogate._side_neighbours]

    def fit(self, data, mask=None, sigma=None, progress=None) -> DictionaryFit:
        """Fit every voxel in ``mask``.

        data: [..., M] normalised signals on the dictionary's measurements. mask: [...] bool
        (default all). sigma: normalised noise σ, [...] or [..., M]; voxels whose σ is not finite and
        positive fall back to plain least squares. progress: optional callable(n_voxels_done).
        """
        given, given_sigma = data, sigma
        data, shape, flat, mask = voxel_table(data, mask, len(self.dictionary.protocol), "a dictionary")
        m = flat.shape[1]
        if sigma is not None:
            sigma = np.broadcast_to(np.asarray(sigma, float).reshape(shape + (-1,)), shape + (m,)).reshape(-1, m)
        in_mask, valid = fit_plan(flat, mask)
        if sigma is not None:
            valid &= ~np.any(np.isinf(sigma), axis=1)  # NaN σ -> least squares
        p, n_vox = len(self.names), flat.shape[0]
        params = np.zeros((n_vox, p))
        sd = np.zeros((n_vox, p))
        fobj, loglik = np.zeros(n_vox), np.zeros(n_vox)
        exitcode = np.where(in_mask, EXIT_FAILED, EXIT_BACKGROUND).astype(np.int8)
        for arr in (params, sd):
            arr[in_mask & ~valid] = np.nan
        fobj[in_mask & ~valid] = np.nan
        loglik[in_mask & ~valid] = np.nan
        todo = np.flatnonzero(valid)
        n_iter, kept_entry, n_unconverged = 0, 0, 0
        for idx in voxel_chunks(todo, self.chunk_size, progress):
            res = self._fit_chunk(flat[idx], np.zeros((idx.size, m)) if sigma is None else sigma[idx])
            params[idx], sd[idx], fobj[idx], loglik[idx], ok, it, kept, unconverged = res
            exitcode[idx] = np.where(ok, EXIT_OK, EXIT_FAILED)
            n_iter += it
            kept_entry += kept
            n_unconverged += unconverged
        info = {"n_fitted": int(todo.size), "n_invalid": int((in_mask & ~valid).sum()),
                "mean_lm_iterations": round(n_iter / max(todo.size, 1), 2),
                "n_kept_dictionary_entry": int(kept_entry), "n_lm_not_converged": int(n_unconverged),
                "surrogate": self.surrogate_kind,
                "noise_model": self.noise, "device": self.device,
                "estimate_placement": estimate_placement(params[exitcode == EXIT_OK], self.dictionary,
                                                         [self.names[j] for j in self.free], *self.bounds())}
        fit = assemble_fit(self.dictionary, self.free, shape, m, params, sd, exitcode, fobj, loglik, info,
                           model=self, data=given, sigma=given_sigma)
        laplace_intervals(fit, self.dictionary, self.free, *self.bounds())
        return fit

    def describe(self) -> Description:
        """The published method: grid search + projected Levenberg-Marquardt on a thin-plate-spline surrogate."""
        surrogate = (f"thin-plate-spline surrogate ({self.surrogate_kind}, {self.n_neighbours} nearest entries per "
                     "local model)" if self.surrogate_kind == "local" else "thin-plate-spline surrogate (global)")
        noise = {"offset-gaussian": "offset-Gaussian", "rician": "Rician"}[self.noise]
        return Description(
            method=f"voxel by voxel by grid search followed by bounded Levenberg-Marquardt on a "
                   f"{surrogate.split(' (')[0]} ({noise} noise model), with standard deviations from the Fisher "
                   "information",
            parameters={"FitMethod": f"dictionary grid search + projected Levenberg-Marquardt on a {surrogate}",
                        "NoiseModel": noise,
                        "Uncertainty": "desc-sd: sqrt(diag(inverse Fisher information)) at the estimate; desc-ci95lo/"
                                       "desc-ci95hi: estimate -/+ 1.96 SD within the bounds; desc-contraction: "
                                       "1 - SD^2 / prior variance (Laplace approximation)",
                        "NoiseFloor": "sigma*sqrt(NAverages)*sqrt(pi/2) (no noise map: least squares)",
                        "NAverages": self.n_averages,
                        "Regularisation": {"Norm": self.reg_norm, "Weight": self.reg_weight},
                        "Bounds": self.user_bounds or "dictionary range", "SurrogateSmoothing": self.smoothing})

    def predict(self, params, protocol=None) -> np.ndarray:
        """Noise-free signal [V, M] at params [V, P] (physical units): the surrogate between the entries."""
        self._own_measurements(protocol, self.dictionary.protocol)
        params = np.atleast_2d(np.asarray(params, float))
        return self.surrogate((params[:, self.free] - self.lo[self.free]) / self.scale)

    def fitted_signal(self, data, params, sigma=None) -> np.ndarray:
        """Expected magnitude [V, M] at the estimates params [V, P]: predict() with the likelihood's noise floor
        (σ [V, M] normalised, or None: none). data is not needed (the estimate says it all)."""
        s = self.predict(params)
        if sigma is None:
            return s
        _, _, flo2, _, _ = self._noise_terms(np.atleast_2d(np.asarray(sigma, float)), s.shape[1])
        return expected_signal(s, np.sqrt(flo2))

    def _fit_chunk(self, d, sigma_chunk):
        """One chunk on the model's backend (on_backend: the one CUDA fallback; the CPU kernels are the same)."""
        def run():
            return self._fit_chunk_on_backend(d, sigma_chunk)
        return on_backend(self, "dictionary fit", run, run)

    def _fit_chunk_on_backend(self, d, sigma_chunk):
        v, m = d.shape
        d = np.ascontiguousarray(d)
        w, sig2, flo2, rician, has_sigma = self._noise_terms(sigma_chunk, m)
        best, _ = self.grid_search(d, np.sqrt(flo2))
        sur = self.surrogate
        _, pen, sig_exact = self._grid_arrays()
        grid_cost = np.empty(v)  # the best entry's cost under the chosen noise model
        kernels.entry_cost(d, w, sig2, flo2, rician, sig_exact, best, pen, grid_cost)
        z = np.ascontiguousarray(self.entries_z[best])
        anchor = sur.model_of_input[best]
        z, anchor, cost, iters, status = self._refine(d, w, sig2, flo2, rician, z, anchor)
        s, jt = np.empty((v, m)), np.empty((v, self.free.size, m))
        kernels.evaluate(d, w, sig2, flo2, rician, z, anchor, sur.centres, sur.weights, sur.poly, sur.origin,
                         self.uscale, self.reg_norm, self.reg_weight, s, jt, cost)
        keep = ~(cost <= grid_cost)  # the surrogate never beat the exact entry: keep the entry
        z[keep] = self.entries_z[best[keep]]
        s[keep] = sig_exact[best[keep]]
        cost[keep] = grid_cost[keep]
        p = np.tile(self.lo, (v, 1))
        p[:, self.free] = self.lo[self.free] + z * self.scale
        g = expected_signal(s, np.sqrt(flo2))
        ll = self._loglik(d, s, g, sig2, rician, has_sigma)
        sd = np.zeros_like(p)
        sd[:, self.free] = self._fisher_sd(d, s, g, jt / self.scale[None, :, None], sig2, has_sigma)
        ok = np.all(np.isfinite(p), axis=1) & np.isfinite(cost)
        p[~ok] = np.nan
        sd[~ok] = np.nan
        return p, sd, cost, ll, ok, int(iters.sum()), int(keep.sum()), int(np.sum(status != kernels.LM_CONVERGED))

    def _loglik(self, d, s, g, sig2, rician, has_sigma):
        m = d.shape[1]
        r = d - g
        with np.errstate(divide="ignore", invalid="ignore"):
            ll = log_likelihood(np.sum(r**2 / sig2, 1), np.sum(np.log(sig2), 1), m)
            if np.any(rician):
                ll[rician] = rician_log_likelihood(d[rician], s[rician], np.sqrt(sig2[rician]))
        return np.where(has_sigma, ll, log_likelihood_unknown_sigma(np.sum(r**2, 1), m))

    def _fisher_sd(self, d, s, g, jac_p, sig2, has_sigma):
        """sqrt(diag(I⁻¹)), I = Σ_k q_k² J_k J_kᵀ / σ_k², q = ∂g/∂s; jac_p [V, P, M] in physical units.
        Without a noise map σ_k² = RSS/(M - P). NaN where I is singular (condition > 1e12)."""
        m, n_p = d.shape[1], jac_p.shape[1]
        q = np.divide(s, g, out=np.ones_like(s), where=g > 0)
        rss = np.sum((d - g) ** 2, 1) / max(m - n_p, 1)
        var = np.where(has_sigma[:, None], sig2, np.maximum(rss, 1e-300)[:, None])
        a = jac_p * (q / np.sqrt(var))[:, None, :]
        info = np.einsum("vpk,vqk->vpq", a, a)
        u, sv, vt = np.linalg.svd(info)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_diag = np.einsum("vpk,vk,vpk->vp", np.swapaxes(vt, 1, 2), 1.0 / sv, u)
            bad = ~(sv[:, -1] > sv[:, 0] * 1e-12)
        out = np.sqrt(np.maximum(inv_diag, 0.0))
        out[bad] = np.nan
        return out


#: Whether ``device='auto'`` runs an estimator's kernels on a visible GPU: only where the GPU was measured
#: faster than every CPU core of the same machine. 'ml': no, 0.3x of 16 cores on an H100 (docs/benchmarks.md,
#: block fit-gpu); 'posterior' and 'joint': no, not yet timed on hardware (benchmarks/gpu_estimators.py).
#: ``device='gpu'`` runs them there regardless.
AUTO_USES_GPU = {"ml": False, "posterior": False, "joint": False}


def _backend(device: str, estimator: str = "ml"):
    """kernels (CPU) or the GPU module for device 'cpu', 'gpu' (error if absent) or 'auto' (the GPU only
    when one is visible and AUTO_USES_GPU[estimator])."""
    if device not in ("cpu", "gpu", "auto"):
        raise ValueError(f"device {device!r} is not one of cpu, gpu, auto")
    if device == "cpu" or (device == "auto" and not AUTO_USES_GPU.get(estimator, False)):
        return kernels
    from . import gpu
    if gpu.available():
        return gpu
    if device == "gpu":
        raise RuntimeError("no CUDA GPU is available (install the [gpu] extra on a machine with an NVIDIA GPU)")
    return kernels


def on_backend(model, what: str, gpu_call, cpu_call):
    """gpu_call() where model.backend is the GPU module, else cpu_call(). Under model.requested_device 'auto',
    a GPU that CUDA cannot use (cudacompat.cuda_unavailable_errors) hands this and every later call of the
    model to the CPU (model.backend, model.device), with one warning naming ``what``; any other error is
    raised."""
    if model.backend is kernels:
        return cpu_call()
    from ..cudacompat import cuda_unavailable_errors, warn_cpu_fallback
    try:
        return gpu_call()
    except cuda_unavailable_errors() as exc:
        if model.requested_device != "auto":
            raise
        warn_cpu_fallback(what, exc)
        model.backend, model.device = kernels, "cpu"
        return cpu_call()
