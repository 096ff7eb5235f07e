"""Bayesian dictionary estimator: posterior over the continuous parameters, calibrated intervals, identifiability.

For a voxel with normalised measurements y_m (m = 1..M), noise σ and noise floor nf = σ·sqrt(N)·sqrt(π/2)
(likelihood.py; nf = 0 for ``noise='gaussian'``, e.g. the vascular signal, a difference of magnitudes):

1. Prior: flat over the dictionary's entries inside the bounds (``prior='entries'``, the default), or flat
   over its design box (``prior='design'``). The entries do not sample that box evenly (the default
   dictionary holds every κ = 0 configuration and D0ex = ratio x D0in, so low D0ex and κ = 0 are crowded),
   so under 'design' each entry carries a prior weight that evens out the design axes (design_prior:
   iterative proportional fitting of the entry weights until every design axis has a flat histogram;
   structure-level parameters such as fin keep the dictionary's population of substrates or networks).
   'design' lowers the D0ex and κ biases and the median errors of fin and κ, but ranks vCS, D0in and D0ex
   worse at SNR 20 (docs/benchmarks.md, blocks `joint-model-prior-design` and
   `default-on-histology-snr20-prior-design`), so the rank-preserving 'entries' stays the default.
   Likelihood: offset-Gaussian, log L_k = -Σ_m (y_m - sqrt(s_km² + nf²))² / (2σ²) (σ² = min_k RSS_k / M
   without a noise map). The N_ADJUST entries of highest likelihood carry the posterior weights w_k.
2. Between the entries, the posterior is continuous: each retained entry's parameters are moved by
   local-linear regression adjustment (Beaumont, Zhang & Balding 2002, the standard correction of
   approximate-Bayesian samples), θ*_k = θ_k - B·(z_k - z_y), where z are the signals' coordinates on the
   dictionary's first principal components and B the w-weighted least-squares slope of θ on z (ridge
   RIDGE). This is a local surrogate of the inverse map signal -> parameters, fitted around each voxel:
   it lets the estimate leave the dictionary's discrete values (e.g. a substrate's fin that no
   dictionary substrate has). Adjusted values are kept inside the prior range.
3. Point estimate: the weighted median of θ* (default) or its weighted mean; positive parameters that
   span a decade or more (velocities, lengths of vessels) are handled on a log scale. ``point_prior``
   chooses, per parameter, the prior whose posterior gives that parameter's estimate and SD: the retained
   entries' weights are reweighted by the design prior's entry weights (or by their inverse), the
   importance weights of the other prior. Under absolute-error loss the posterior median is optimal for
   the prior the tissue follows, so the choice is made per parameter where held-out tissue shows which
   prior it follows better (the app's default: workflows/config.py, from the leave-one-out folds).
4. Uncertainty: posterior variance = weighted variance of θ* + σ²·|B|² (the data's noise carried through
   the local inverse map: the dictionary's signals are noise-free, so the adjusted entries alone would
   forget it) + the dictionary's own
   *model error* h², measured once per dictionary by internal cross-validation: every structure
   (substrate or network: entries that share the value of the most varied parameter) is left out in
   turn, a sample of its noise-free signals is estimated from the rest, and h is the RMS error per
   parameter. Without this term the intervals would pretend that the tissue is one of the dictionary's
   structures. h is local: the RMS error of the MODEL_ERROR_NEIGHBOURS internal estimates nearest to the
   voxel's estimate. The noise and the model error interact (noisy data from an unseen structure err more
   than the two terms add up to), so the same left-out entries are estimated once more with the session's
   noise added, and each parameter's SD is multiplied by the factor c >= 1 that makes those intervals cover
   95 % (_interval_calibration). SD = c·sqrt(var + h²), capped at half the prior range (the largest SD of any
   distribution on that range); 95 % interval = estimate ± 1.96 SD, clipped to the dictionary's range
   widened by half a grid step for its design axes and to the physical limits for the structure-level
   parameters, which the dictionary only samples (interval_limits).
5. Identifiability (IDENTIFIABILITY, one definition for every model): posterior contraction
   1 - var_post / var_prior on the estimator's scale (log for the log-scaled parameters, where the intervals
   are symmetric), var_post the interval's variance (model error included), var_prior the variance of the
   parameter over the prior (the entries inside the bounds): 0 = the data say nothing beyond the
   dictionary's range, 1 = fully determined; the verdict follows from it (identifiability_summary).

The vascular branch uses this same estimator with ``noise='gaussian'``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from ..dictionary import Dictionary, principal_components
from . import kernels
from .dictfit import DictionaryFit, _backend, assemble_fit, estimate_placement, on_backend
from .likelihood import Z95, add_noise, noise_floor
from .model import EXIT_BACKGROUND, EXIT_FAILED, EXIT_OK, Description, Model, fit_plan, voxel_chunks, voxel_table, b_range

#: Largest voxel x entry matrix of one posterior batch [elements] (~100 MB of float64 each).
POSTERIOR_BATCH_ELEMENTS = 12_000_000
#: Entries of highest likelihood that carry the posterior (the rest weigh < exp(-much)).
N_ADJUST = 256
#: Principal components of the dictionary's signals used by the regression adjustment; ridge weight.
N_COMPONENTS, RIDGE = 6, 1e-3
#: The regression's kernel reaches at least this many nearest entries.
REGRESSION_NEIGHBOURS = 12
#: Entries sampled for the dictionary's model error (internal leave-one-structure-out).
MODEL_ERROR_SAMPLES = 2048
#: The SD's calibration factor (PosteriorModel._interval_calibration) is kept within these (widen, never narrow).
CALIBRATION_LIMITS = (1.0, 4.0)
#: Internal estimates nearest to a voxel's estimate that give its local model error.
MODEL_ERROR_NEIGHBOURS = 128
#: Histogram bins per design axis of the flat design prior (design_prior); the clip of its entry weights.
PRIOR_BINS, PRIOR_WEIGHT_CLIP = 7, 20.0
#: A design axis with at most this many distinct values is a grid: each value is one bin of design_prior.
PRIOR_DISCRETE_MAX = 12
#: Most entries per leaf of the tree of the retained-entry search (dictionary_leaves).
LEAF_SIZE = 32
#: Voxels whose noise floors are within this fraction of each other share one matrix product (_select_bounded).
FLOOR_GROUP = 0.02
#: Priors: flat over the design box ('design') or over the dictionary's entries ('entries').
PRIORS = ("design", "entries")
#: Point estimates: the posterior median or mean.
POINT_ESTIMATES = ("median", "mean")
#: The posterior's likelihoods (likelihood.LIKELIHOODS): offset-Gaussian (noise floor of magnitude data) or
#: Gaussian (no floor).
NOISE_MODELS = ("offset-gaussian", "gaussian")


def dictionary_leaves(signals: np.ndarray, leaf_size: int = LEAF_SIZE) -> tuple:
    """A tree over the entries' signals [E, M] for the retained-entry search: each node split in half (by
    count) along its entries' first principal direction, down to leaves of at most leaf_size entries. Returns
    (perm [E], leaf_start [L + 1]): leaf l holds the entries perm[leaf_start[l]:leaf_start[l + 1]]."""
    parts, stack = [], [np.arange(len(signals))]
    while stack:
        idx = stack.pop()
        if idx.size <= leaf_size:
            parts.append(idx)
            continue
        z = signals[idx] - signals[idx].mean(0)
        axis = np.linalg.svd(z, full_matrices=False)[2][0]
        order = np.argsort(z @ axis, kind="stable")
        half = idx.size // 2
        stack += [idx[order[half:]], idx[order[:half]]]
    return np.concatenate(parts), np.cumsum([0] + [p.size for p in parts])


def leaf_balls(rows: np.ndarray, leaf_start: np.ndarray) -> tuple:
    """(centres [L, M], radii [L]): each leaf's mean of its rows [E, M] (in leaf order) and the largest
    distance of a row from it."""
    sizes = np.diff(leaf_start)
    centres = np.add.reduceat(rows, leaf_start[:-1], axis=0) / sizes[:, None]
    dist = np.sqrt(((rows - np.repeat(centres, sizes, axis=0)) ** 2).sum(1))
    return np.ascontiguousarray(centres), np.maximum.reduceat(dist, leaf_start[:-1])


def posterior_chunk(chunk_size: int, n_entries: int) -> int:
    """Voxels per posterior batch: at most chunk_size, 2000, and POSTERIOR_BATCH_ELEMENTS / entries."""
    return max(16, min(int(chunk_size), 2000, POSTERIOR_BATCH_ELEMENTS // max(int(n_entries), 1)))


def varies_within_structures(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """[P] bool: which parameters (columns of values [K, P]) take more than one value inside some structure
    (groups [K]): the design axes (D0, κ); the others are structure-level (fin, cell size)."""
    n_groups = np.unique(groups).size
    return np.array([np.unique(np.stack([groups, values[:, j]], 1), axis=0).shape[0] != n_groups
                     for j in range(values.shape[1])], bool)


def structure_groups(params: np.ndarray) -> np.ndarray | None:
    """Structure index [K] of every entry, or None for a dictionary without structures. Entries that share
    the value of the most varied parameter come from one substrate or network when at least one other
    parameter is also constant within each such group (a substrate has several properties: fin, cell
    size, ...); when that parameter never repeats, every entry is its own structure (scattered network
    realisations). Otherwise the dictionary is a crossed design grid (or has one parameter): None, there
    is no unseen structure, only the grid's resolution, which the regression adjustment bridges."""
    k, p = params.shape
    counts = [np.unique(params[:, j]).size for j in range(p)]
    groups = np.unique(params[:, int(np.argmax(counts))], return_inverse=True)[1].ravel()
    if np.unique(groups).size == k:
        return groups
    return groups if int(np.sum(~varies_within_structures(params, groups))) >= 2 else None


def interval_limits(params: np.ndarray, groups: np.ndarray | None, log: np.ndarray, lo_t, hi_t) -> tuple:
    """Where the 95 % intervals are clipped (estimator's scale). A parameter varied within the structures
    (a design axis such as D0 or kappa) is sampled on a grid whose end nodes stand for the values within half
    a grid step of them: its interval may reach that far beyond the dictionary's range (kappa's last node
    39.9 stands for 40 too), not below 0 for a non-negative parameter. A structure-level parameter (one value
    per substrate or network, e.g. fin, cell size) is a property of tissue the dictionary only samples: its
    interval may leave the sampled range, up to its physical limits (0 for non-negative parameters, 1 for
    fractions; none on a log scale)."""
    lo, hi = np.array(lo_t, float), np.array(hi_t, float)
    values = np.where(log, np.log(np.where(params > 0, params, 1.0)), params)
    design = np.ones(params.shape[1], bool) if groups is None else varies_within_structures(params, groups)
    for j in range(params.shape[1]):
        col = params[:, j]
        if design[j]:
            nodes = np.unique(values[:, j])
            if nodes.size >= 2:
                lo[j] = nodes[0] - 0.5 * (nodes[1] - nodes[0])
                hi[j] = nodes[-1] + 0.5 * (nodes[-1] - nodes[-2])
                if not log[j] and col.min() >= 0:
                    lo[j] = max(lo[j], 0.0)
            continue
        lo[j] = -np.inf if log[j] or col.min() < 0 else 0.0
        hi[j] = 1.0 if not log[j] and col.min() >= 0 and col.max() <= 1 else np.inf
    return lo, hi


def design_prior(values: np.ndarray, groups: np.ndarray | None, iterations: int = 100) -> np.ndarray:
    """Log prior weight [K] of every entry (values: parameters on the estimator's scale) that makes the prior
    flat along each design axis: the parameters that vary within a structure (every free parameter of a
    dictionary without structures), each binned by its values when it has at most PRIOR_DISCRETE_MAX (a
    grid axis; a crossed grid thus keeps equal weights), else into PRIOR_BINS equal bins of its range; the
    weights are fitted by iterative proportional fitting (raking) to equal bin totals. Structure-level parameters keep the
    dictionary's population. Weights are clipped to [1/PRIOR_WEIGHT_CLIP, PRIOR_WEIGHT_CLIP] x their mean."""
    k, p = values.shape
    axes = (np.flatnonzero(np.ptp(values, axis=0) > 0) if groups is None
            else np.flatnonzero(varies_within_structures(values, groups)))
    w = np.ones(k)
    bins = []
    for j in axes:
        distinct, index = np.unique(values[:, j], return_inverse=True)
        if distinct.size <= PRIOR_DISCRETE_MAX:   # a grid axis: every value is one bin
            bins.append(index.ravel())
            continue
        lo, span = values[:, j].min(), np.ptp(values[:, j])
        bins.append(np.minimum(((values[:, j] - lo) / span * PRIOR_BINS).astype(np.int64), PRIOR_BINS - 1))
    for _ in range(iterations if bins else 0):
        for b in bins:
            total = np.bincount(b, w)
            filled = total > 0
            target = total[filled].sum() / filled.sum()
            w *= np.where(filled, target / np.where(filled, total, 1.0), 1.0)[b]
        w = np.clip(w / w.mean(), 1.0 / PRIOR_WEIGHT_CLIP, PRIOR_WEIGHT_CLIP)
    return np.log(w / w.mean())


def log_scaled(params: np.ndarray) -> np.ndarray:
    """Which parameters the estimator handles on a log scale: positive, above 1 somewhere and spanning
    a factor of 10 or more (fractions and narrow ranges stay linear)."""
    lo, hi = params.min(0), params.max(0)
    return (lo > 0) & (hi > 1) & (hi >= 10 * np.where(lo > 0, lo, 1.0))


class PosteriorModel(Model):
    """dictionary: signals on exactly the measurements to fit; chunk_size: voxels per batch; point:
    'median' or 'mean'; bounds: {name: (lo, hi)} physical units, the prior's support (entries outside
    are dropped); noise: 'offset-gaussian' or 'gaussian'; n_averages: N of likelihood.py; model_error:
    add the dictionary's cross-validated model error to the posterior variance; device: 'cpu', 'gpu' or
    'auto' for the likelihood of every entry (gpu.py; 'auto' takes the GPU only where dictfit.AUTO_USES_GPU
    says it was measured faster, and a failing GPU falls back to the CPU);
    prior: 'design' (flat over the design axes, design_prior) or 'entries' (flat over the entries);
    point_prior: {parameter: 'design' or 'entries'}, the prior of that parameter's estimate and SD
    (parameters not named, or not in the dictionary, follow ``prior``)."""

    def __init__(self, dictionary: Dictionary, chunk_size: int = 2000, point: str = "median",
                 bounds: dict | None = None, noise: str = "offset-gaussian", n_averages: float = 1.0,
                 model_error: bool = True, device: str = "cpu", prior: str = "entries",
                 point_prior: dict | None = None):
        for name, value in [("prior", prior), *((f"point prior of {k}", v) for k, v in (point_prior or {}).items())]:
            if value not in PRIORS:
                raise ValueError(f"{name} {value!r} is not one of {PRIORS}")
        if point not in POINT_ESTIMATES:
            raise ValueError(f"point estimate {point!r} is not one of {POINT_ESTIMATES}")
        if noise not in NOISE_MODELS:
            raise ValueError(f"noise model {noise!r} is not one of {NOISE_MODELS}")
        self.requested_device = device
        self.backend = _backend(device, "posterior")
        self.device = "cpu" if self.backend is kernels else "gpu"
        self.user_bounds = {k: tuple(v) for k, v in (bounds or {}).items()}
        dictionary = dictionary.within(self.user_bounds) if self.user_bounds else dictionary
        self.dictionary = dictionary
        self.names = list(dictionary.names)
        self.chunk_size, self.point, self.noise = int(chunk_size), point, noise
        self.n_averages, self.use_model_error = float(n_averages), bool(model_error)
        p = dictionary.params
        self.log = log_scaled(p)
        self.values = np.where(self.log, np.log(np.where(p > 0, p, 1.0)), p)   # the estimator's scale
        self.lo_t, self.hi_t = self.values.min(0), self.values.max(0)
        self.lo, self.hi = dictionary.ranges()
        self.free = np.flatnonzero(np.ptp(p, axis=0) > 0)
        self.groups = dictionary.structure if dictionary.structure is not None else structure_groups(p)
        self.prior = prior
        self.point_prior = {k: v for k, v in (point_prior or {}).items() if k in self.names}
        # per parameter: +1 its estimate reweights the retained entries towards the design prior, -1 away
        # from it (prior 'design', estimate 'entries'), 0 it follows the posterior's own prior
        self.point_reweight = np.array([{"design": 1, "entries": -1}[self.point_prior[n]] * (self.point_prior[n] != prior)
                                        if n in self.point_prior else 0 for n in self.names], int)
        needs_design = prior == "design" or bool(np.any(self.point_reweight))
        self.design_log_prior = design_prior(self.values, self.groups) if needs_design else np.zeros(len(p))
        self.log_prior = self.design_log_prior if prior == "design" else np.zeros(len(p))
        w_prior = np.exp(self.log_prior)
        self.prior_var = np.average((p - np.average(p, axis=0, weights=w_prior)) ** 2, axis=0, weights=w_prior)
        v = self.values   # the estimator's scale: the contraction's
        self.prior_var_t = np.average((v - np.average(v, axis=0, weights=w_prior)) ** 2, axis=0, weights=w_prior)
        self.int_lo, self.int_hi = interval_limits(p, self.groups, self.log, self.lo_t, self.hi_t)
        self.signals = np.ascontiguousarray(dictionary.signals, np.float64)
        self.signals_t = np.ascontiguousarray(self.signals.T)
        self.n_keep = int(min(N_ADJUST, len(dictionary)))
        self._basis = principal_components(self.signals, N_COMPONENTS, max_entries=20000)
        self._z_entries = np.ascontiguousarray((self.signals - self._basis[0]) @ self._basis[1].T)   # [E, r]
        self._same_signals = None   # entries grouped by identical signals (structure_of)
        self._model_error = None   # per parameter, on the estimator's scale (model_error())
        self._calibration = None   # the SD's factor per parameter (model_error(): _interval_calibration)
        self._floored = None   # the dictionary at one noise floor (_floored_signals)
        self._leaves = None   # the dictionary's tree and its balls at one noise floor (_leaves_at)

    # ---- the posterior of a batch of voxels --------------------------------------------------------------
    def posterior(self, y: np.ndarray, sigma: np.ndarray | None, exclude: np.ndarray | None = None,
                  scale_var: np.ndarray | None = None) -> dict:
        """Posterior summaries of voxels y [V, M] (σ [V] or None) on the estimator's scale: 'top' [V, n] the
        retained entries (in entry order), 'point', 'var' [V, P], 'best' (min RSS) and 'var_noise' [V]
        (kernels.posterior_moments).
        exclude [V] (optional): a structure index per voxel (structure_of) whose entries are left out
        (cross-validation). scale_var [V] (optional): variance of an unknown common scale of each voxel's
        signal (e.g. an uncertain compartment fraction removed before), marginalised: the misfit loses
        κ <y - s, y>², κ = τ²/(σ² + τ²|y|²) (the signal's shape standing in for the model's)."""
        y = np.ascontiguousarray(y, np.float64)
        v, m = y.shape
        var_noise = np.full(v, np.nan) if sigma is None else np.asarray(sigma, float) ** 2
        floor = np.zeros(v) if sigma is None or self.noise == "gaussian" else noise_floor(sigma, self.n_averages)
        scale_var = None if scale_var is None or not np.any(np.asarray(scale_var) > 0) else np.asarray(scale_var, float)
        n_e = self.signals.shape[0]
        n = min(self.n_keep, n_e - 1) if n_e > 1 else 1
        scale_term = scale_var if sigma is not None else None   # the common-scale term of the cost needs σ
        if exclude is None and n_e > n:
            top, c, rss = self._select(y, floor, var_noise, scale_term, n)
        else:
            top, c, rss = self._select_from_costs(y, floor, var_noise, scale_term, exclude, n)
        var_noise = np.where(np.isfinite(var_noise) & (var_noise > 0), var_noise, np.maximum(rss / m, 1e-12))
        clean = np.sqrt(np.maximum(y ** 2 - (floor ** 2)[:, None], 0.0))   # floor-corrected data
        tau = np.zeros(v) if scale_var is None else np.sqrt(scale_var)
        p = len(self.names)
        point, var = np.empty((v, p)), np.empty((v, p))
        mu, comps = self._basis
        # the retained entries in entry order, whatever selected them; the regression's kernel at least as wide
        # as the REGRESSION_NEIGHBOURS-th nearest entry (a neighbourhood even where the posterior sits on one
        # entry: high SNR, coarse dictionary); with prior 'design' its neighbours by the misfit alone
        w, samples, tied = np.empty((v, n)), np.empty((v, p, n)), np.empty((v, p), np.bool_)
        kernels.posterior_moments(top, c, var_noise, clean, tau, self.signals, self.values, self._z_entries, mu, comps,
                                  self.log_prior, self.design_log_prior, self.prior == "design", self.point_reweight,
                                  self.lo_t, self.hi_t, min(REGRESSION_NEIGHBOURS, n) - 1, RIDGE, self.point == "median",
                                  point, var, w, samples, tied)
        for i, j in zip(*np.nonzero(tied)):   # a median read from twin samples: numpy's sort order, as always
            wj = w[i:i + 1]
            if self.point_reweight[j]:
                wj = wj * np.exp(self.point_reweight[j] * self.design_log_prior[top[i:i + 1]])
                wj = wj / wj.sum(1, keepdims=True)
            point[i, j] = weighted_quantile(samples[i, j][None, :, None], wj, 0.5)[0, 0]
        return {"top": top, "point": point, "var": var, "best": rss, "var_noise": var_noise}

    def _select(self, y, floor, var_noise, scale_var, n) -> tuple:
        """The n retained entries top [V, n] of least cost on the posterior's scale (-2σ² log(prior ·
        likelihood) up to a constant; ties at the n-th cost by entry index), their costs c [V, n] and rss
        [V] the least misfit of any entry, in one pass over the entries per voxel on the model's device
        (kernels.select_smallest: no [V, E] cost matrix). var_noise [V]: σ², NaN where unknown (then
        max(rss / M, 1e-12)); scale_var [V] or None: the common-scale term (needs σ)."""
        v = y.shape[0]
        flo2 = _squared_floor(floor, y.shape[1])
        clean, kappa = (np.zeros((v, 1)), np.zeros(v)) if scale_var is None else \
            self._common_scale(y, floor, var_noise, scale_var)
        top, c, rss = np.empty((v, n), np.int64), np.empty((v, n)), np.empty(v)
        args = (y, flo2, self.signals_t, clean, kappa, self.log_prior, np.ascontiguousarray(var_noise, np.float64),
                self.prior == "design", top, c, rss)
        if self.backend is kernels:
            self._select_bounded(floor, args)
        elif n > self.backend.MAX_KEEP:   # more than a GPU thread holds
            kernels.select_smallest(*args)
        else:
            self._on_device("select_smallest", *args)
        return top, c, rss

    def _select_bounded(self, floor, args) -> None:
        """kernels.select_smallest's result on the CPU, from bounds that rule out most entries before their cost
        is computed (the retained entries, their costs and rss are select_smallest's, bit for bit). The voxels
        are sorted by noise floor nf and grouped where nf is within FLOOR_GROUP (relative) of the group's least;
        the group's dictionary at its middle floor f0, G = sqrt(S² + f0²), is within d = |nf - f0|·sqrt(M) of
        each voxel's in the cost's square root (kernels._bounded_raw). Without the common-scale term and the
        prior, a tree over the entries (dictionary_leaves) lets each voxel visit only the leaves whose ball can
        hold one of its n least (kernels.select_smallest_leaves); otherwise every entry's misfit at f0, a
        product, bounds its cost (kernels.select_smallest_bounded: in the joint fit the common-scale term can
        take most of a voxel's misfit, which leaves a tree's bound too weak to prune)."""
        y, flo2, signals_t, clean, kappa, log_prior, var, use_prior, top, c_top, rss = args
        v, m = y.shape
        leaves = not use_prior and not np.any(kappa)
        order = np.argsort(floor, kind="stable")
        f_sorted = floor[order]
        y_norm = np.sqrt((y ** 2).sum(1))
        rounding = 2 * (m + 4) * float(np.finfo(np.float64).eps) / 2   # twice the textbook bound of a dot product
        n = top.shape[1]
        start = 0
        while start < v:
            stop = max(int(np.searchsorted(f_sorted, f_sorted[start] * (1 + FLOOR_GROUP), side="right")), start + 1)
            idx = order[start:stop]
            f0 = 0.5 * (f_sorted[start] + f_sorted[stop - 1])
            dist = np.sqrt(m) * np.abs(floor[idx] - f0) * (1 + 1e-9) + 1e-15
            tb, cb, rb = np.empty((idx.size, n), np.int64), np.empty((idx.size, n)), np.empty(idx.size)
            if leaves:
                g_leaf, perm, leaf_start, centres, radii = self._leaves_at(f0)
                kernels.select_smallest_leaves(y[idx], flo2[idx], signals_t, g_leaf, perm, leaf_start, centres, radii,
                                               dist, numba.get_num_threads(), tb, cb, rb)
            else:
                g_t, gg, g_max = self._floored_signals(f0)
                eps = 2 * rounding * y_norm[idx] * g_max * (1 + g_max) + 1e-13 * (y_norm[idx] + g_max) ** 2
                kernels.select_smallest_bounded(y[idx], flo2[idx], signals_t, clean[idx], kappa[idx], log_prior,
                                                var[idx], use_prior, g_t, gg, np.stack([dist, eps], 1),
                                                numba.get_num_threads(), tb, cb, rb)
            top[idx], c_top[idx], rss[idx] = tb, cb, rb
            start = stop

    def _floored_signals(self, f0: float) -> tuple:
        """(Gᵀ [M, E], |G_e|² [E], max |G_e|) of the dictionary at noise floor f0: G = sqrt(S² + f0²), the
        last one kept (a session's voxels often share one floor)."""
        if self._floored is None or self._floored[0] != f0:
            g = np.sqrt(self.signals ** 2 + f0 ** 2)
            gg = (g ** 2).sum(1)
            self._floored = (f0, np.ascontiguousarray(g.T), gg, float(np.sqrt(gg.max())))
        return self._floored[1:]

    def _leaves_at(self, f0: float) -> tuple:
        """(G [E, M] in leaf order, perm, leaf_start, centres [L, M], radii [L]) of the dictionary's tree
        (dictionary_leaves, built once) at noise floor f0, the last one kept."""
        if self._leaves is None:
            self._leaves = (None, *dictionary_leaves(self.signals))
        if self._leaves[0] != f0:
            perm, leaf_start = self._leaves[1:3]
            g = np.sqrt(self.signals[perm] ** 2 + f0 ** 2)
            centres, radii = leaf_balls(g, leaf_start)
            self._leaves = (f0, perm, leaf_start, g, centres, radii)
        f0, perm, leaf_start, g, centres, radii = self._leaves
        return g, perm, leaf_start, centres, radii

    def _select_from_costs(self, y, floor, var_noise, scale_var, exclude, n) -> tuple:
        """_select from the [V, E] cost matrix, where some entries are left out per voxel (exclude: the
        structures of cross-validation) or every entry but one is kept."""
        v, m = y.shape
        if scale_var is None:
            cost = self._entry_costs(y, floor)
        else:   # the common-scale term; on the CPU kernel
            clean0, kappa = self._common_scale(y, floor, var_noise, scale_var)
            cost = np.empty((v, self.signals.shape[0]))
            kernels.entry_costs_common_scale(y, _squared_floor(floor, m),
                                             self.signals_t, clean0, kappa, cost)
        if exclude is not None:
            cost[self._exclusion_groups()[None, :] == np.asarray(exclude)[:, None]] = np.inf
        rss = cost.min(1)
        ok = np.isfinite(var_noise) & (var_noise > 0)
        var_noise = np.where(ok, var_noise, np.maximum(rss / m, 1e-12))
        if self.prior == "design":   # -2σ² log(prior · likelihood)
            cost -= (2 * var_noise)[:, None] * self.log_prior[None, :]
        top = smallest_per_row(cost, n) if cost.shape[1] > n else np.tile(np.arange(n), (v, 1))
        return top, np.take_along_axis(cost, top, 1), rss

    @staticmethod
    def _common_scale(y, floor, var_noise, scale_var) -> tuple:
        """(floor-corrected data [V, M], κ [V] = τ²/(σ² + τ²|c|²)) of the common-scale term."""
        clean = np.ascontiguousarray(np.sqrt(np.maximum(y ** 2 - (floor ** 2)[:, None], 0.0)))
        return clean, scale_var / (var_noise + scale_var * (clean ** 2).sum(1))

    def _on_device(self, kernel: str, *args) -> None:
        """The backend's kernel (same arguments on CPU and GPU; dictfit.on_backend's CUDA fallback)."""
        on_backend(self, "posterior", lambda: getattr(self.backend, kernel)(*args), lambda: getattr(kernels, kernel)(*args))

    def _entry_costs(self, y, floor) -> np.ndarray:
        """Cost [V, E] of every entry for voxels y [V, M] with noise floors [V], on the model's device."""
        cost = np.empty((y.shape[0], self.signals.shape[0]))
        flo2 = _squared_floor(floor, y.shape[1])
        self._on_device("entry_costs", np.ascontiguousarray(y, np.float64), flo2, self.signals_t, cost)
        return cost

    def structure_of(self, entries) -> np.ndarray:
        """Structure index of dictionary entries, for ``posterior(exclude=)``: their substrate or network;
        in a dictionary without structures (a crossed grid), the entry and every entry with the very same
        signals (a parameter the signals do not depend on must not be learnt from its own value)."""
        return self._exclusion_groups()[np.asarray(entries, int)]

    def _exclusion_groups(self) -> np.ndarray:
        if self.groups is not None:
            return self.groups
        if self._same_signals is None:
            self._same_signals = np.unique(np.round(self.signals, 12), axis=0, return_inverse=True)[1].ravel()
        return self._same_signals

    # ---- model error of the dictionary -------------------------------------------------------------------
    def model_error(self, sigma_ref: float = 0.02) -> tuple:
        """The dictionary's model error by internal cross-validation: a sample of each structure's noise-free
        signals is estimated with that structure left out (weights with σ = sigma_ref); in a crossed grid,
        entries are left out one by one (structure_of). Returns (estimates [n, P], squared errors [n, P])
        on the estimator's scale, or None for a dictionary of one structure."""
        if self._model_error is not None:
            return self._model_error or None
        if not self.use_model_error or len(self.signals) < 2 or np.unique(self._exclusion_groups()).size < 2:
            self._model_error, self._calibration = (), None
            return None
        rng = np.random.default_rng(0)
        if self.groups is not None:   # stratified: the same number of entries from every structure
            groups = np.unique(self.groups)
            per = max(1, MODEL_ERROR_SAMPLES // groups.size)
            pick = np.concatenate([rng.permutation(np.flatnonzero(self.groups == g))[:per] for g in groups])
        else:                         # a crossed grid: entries left out one by one (with their signal twins)
            pick = rng.permutation(len(self.signals))[:MODEL_ERROR_SAMPLES]
        est = []
        for c0 in range(0, pick.size, self.chunk_size):
            idx = pick[c0:c0 + self.chunk_size]
            est.append(self.posterior(self.signals[idx], np.full(idx.size, sigma_ref), exclude=self.structure_of(idx))["point"])
        est = np.concatenate(est)
        self._model_error = (est, (est - self.values[pick]) ** 2)
        self._calibration = self._interval_calibration(pick, sigma_ref)
        return self._model_error

    def _interval_calibration(self, pick: np.ndarray, sigma: float) -> np.ndarray:
        """Per parameter [P], the factor on the SD (model error included) that makes the 95 % intervals of the
        internal cross-validation cover 95 % of the truths: the entries pick, measured with noise σ (the
        session's; likelihood.add_noise, seeded, so a session's factor never moves with --seed), estimated
        with their structure left out. The model error h, measured on noise-free signals, and the noise's
        share of the posterior variance do not add up to the error of noisy data from an unseen structure (the
        two interact: the noise moves the estimate along the directions the dictionary cannot tell apart),
        nor is a Gaussian interval right for the tails; this factor is what closes the gap, on the dictionary's
        own structures, never on the data being fitted. Clipped to CALIBRATION_LIMITS: the factor widens an
        interval, never narrows it, since tissue from another generator (real histology, another simulator)
        is further from the dictionary than its own structures are from each other (on the shared real
        histology the design axes' errors exceed the internal ones: a factor below 1 took kappa's coverage at
        SNR 20 from 0.93 to 0.89)."""
        y = add_noise(self.signals[pick], float(sigma), self.noise, np.random.default_rng(1), self.n_averages)
        z = []
        for c0 in range(0, pick.size, self.chunk_size):
            idx = pick[c0:c0 + self.chunk_size]
            post = self.posterior(y[c0:c0 + self.chunk_size], np.full(idx.size, float(sigma)),
                                  exclude=self.structure_of(idx))
            sd = np.sqrt(post["var"] + self.local_model_error(post["point"]))
            z.append(np.abs(post["point"] - self.values[idx]) / np.maximum(sd, 1e-300))
        factor = np.quantile(np.concatenate(z), 0.95, axis=0) / Z95
        free = np.zeros(len(self.names), bool)
        free[self.free] = True
        return np.where(free & np.isfinite(factor), np.clip(factor, *CALIBRATION_LIMITS), 1.0)

    def interval_calibration(self) -> dict:
        """{free parameter: the SD's calibration factor} of the last model_error() (empty before)."""
        if self._calibration is None:
            return {}
        return {self.names[j]: round(float(self._calibration[j]), 4) for j in self.free}

    def local_model_error(self, point: np.ndarray) -> np.ndarray:
        """Model error variance [V, P] at each voxel's estimate: the mean squared cross-validation error of
        the MODEL_ERROR_NEIGHBOURS internal estimates nearest to it (range-normalised parameter space), so
        the error may differ across the dictionary's range (heteroscedastic)."""
        me = self._model_error
        if not me:
            return np.zeros_like(point)
        est, err2 = me
        scale = np.where(self.hi_t > self.lo_t, self.hi_t - self.lo_t, 1.0)
        out = np.empty_like(point)
        kernels.nearest_mean(np.ascontiguousarray(point), np.ascontiguousarray(est.T), err2,
                             min(MODEL_ERROR_NEIGHBOURS, len(est)), scale, out)
        return out

    def summaries(self, post: dict) -> tuple:
        """(estimate, SD, 95 % low, 95 % high, contraction) [V, P] in physical units from a posterior."""
        t_sd = np.sqrt(post["var"] + self.local_model_error(post["point"]))
        if self._calibration is not None:
            t_sd = t_sd * self._calibration
        t_lo = np.clip(post["point"] - Z95 * t_sd, self.int_lo, self.int_hi)
        t_hi = np.clip(post["point"] + Z95 * t_sd, self.int_lo, self.int_hi)
        back = lambda t: np.where(self.log, np.exp(t), t)  # noqa: E731
        est, lo, hi = back(post["point"]), back(t_lo), back(t_hi)
        sd = np.minimum(np.where(self.log, t_sd * est, t_sd), (self.hi - self.lo) / 2)
        return est, sd, lo, hi, contraction(t_sd ** 2, self.prior_var_t)

    # ---- Model API -----------------------------------------------------------------------------------------
    def jit_kernels(self, common_scale: bool = False) -> list:
        """Model.jit_kernels; common_scale: fit() is given scale_var (with σ), as the joint model's tissue step
        is: the selection then scans with bounds on products (select_smallest_bounded), not the entry tree."""
        scan = (kernels.select_smallest_bounded if common_scale or self.prior == "design"
                else kernels.select_smallest_leaves)
        return [scan, kernels.posterior_moments, kernels.nearest_mean, kernels.entry_costs]

    def fit(self, data, mask=None, sigma=None, progress=None, scale_var=None) -> DictionaryFit:
        """data [..., M]; mask [...] bool; sigma [...] or [..., M] (its mean over M is used) or None;
        scale_var [...] or None: the variance of an unknown common scale per voxel (posterior())."""
        given, given_sigma = data, sigma
        data, shape, flat, mask = voxel_table(data, mask, len(self.dictionary.protocol), "a dictionary")
        m = flat.shape[1]
        sig = None
        if sigma is not None:
            s = np.asarray(sigma, float)
            sig = (s.reshape(shape + (-1,)).mean(-1) if s.size != np.prod(shape) else s.reshape(shape)).ravel()
        in_mask, valid = fit_plan(flat, mask)
        if sig is not None:
            valid &= np.isfinite(sig)
        n_vox, p = flat.shape[0], len(self.names)
        out = {k: np.full((n_vox, p), np.nan) for k in ("params", "sd", "lo", "hi", "contraction")}
        fobj, loglik = np.full(n_vox, np.nan), np.full(n_vox, np.nan)
        for arr in (*out.values(), fobj, loglik):
            arr[~in_mask] = 0
        exitcode = np.where(in_mask, EXIT_FAILED, EXIT_BACKGROUND).astype(np.int8)
        todo = np.flatnonzero(valid)
        self.model_error(float(np.median(sig[todo])) if sig is not None and todo.size else 0.02)
        for idx in voxel_chunks(todo, self.chunk_size, progress):
            post = self.posterior(flat[idx], None if sig is None else sig[idx],
                                  scale_var=None if scale_var is None else np.asarray(scale_var, float).ravel()[idx])
            for key, arr in zip(("params", "sd", "lo", "hi", "contraction"), self.summaries(post)):
                out[key][idx] = arr
            fobj[idx] = post["best"] / m
            loglik[idx] = -0.5 * (post["best"] / post["var_noise"] + m * np.log(2 * np.pi * post["var_noise"]))
            exitcode[idx] = EXIT_OK
        fit = assemble_fit(self.dictionary, self.free, shape, m, out["params"], out["sd"], exitcode, fobj, loglik,
                           self._info(todo.size, int((in_mask & ~valid).sum()), out["params"][exitcode == EXIT_OK],
                                      out["contraction"][exitcode == EXIT_OK]),
                           model=self, data=given, sigma=given_sigma)
        names = [self.names[j] for j in self.free]
        fit.ci95lo = {n: out["lo"][:, self.names.index(n)].reshape(shape) for n in names}
        fit.ci95hi = {n: out["hi"][:, self.names.index(n)].reshape(shape) for n in names}
        fit.contraction = {n: out["contraction"][:, self.names.index(n)].reshape(shape) for n in names}
        return fit

    def _info(self, n_fitted, n_invalid, params, contraction) -> dict:
        names = [self.names[j] for j in self.free]
        return {"n_fitted": int(n_fitted), "n_invalid": int(n_invalid), "device": self.device,
                "estimator": f"posterior {self.point} (regression-adjusted dictionary posterior)",
                "estimate_placement": estimate_placement(params, self.dictionary, names, self.lo, self.hi),
                "identifiability": identifiability_summary(contraction[:, self.free], names),
                "model_error_rms": self._model_error_rms(names),
                "interval_calibration": self.interval_calibration()}

    def _model_error_rms(self, names) -> dict:
        """RMS cross-validation error per parameter (log-scaled ones as a relative error), for the sidecars."""
        if not self._model_error:
            return {}
        rms = np.sqrt(self._model_error[1].mean(0))
        return {n: round(float(rms[self.names.index(n)]), 6) for n in names}

    def describe(self) -> Description:
        """Posterior median or mean, offset-Gaussian likelihood, the prior (flat over the design box or the entries)."""
        lik = "offset-Gaussian (noise floor)" if self.noise == "offset-gaussian" else "Gaussian"
        prior = ("flat over the dictionary's design axes (entries weighted to even out its sampling)"
                 if self.prior == "design" else "flat over the dictionary's entries")
        other = {"design": "flat over the design axes", "entries": "flat over the entries"}
        moved = [f"{n} ({other[self.point_prior[n]]})" for n, r in zip(self.names, self.point_reweight) if r]
        if moved:
            prior += "; the estimates of " + ", ".join(moved) + " under that prior instead (importance-reweighted)"
        return Description(
            method=f"as the posterior {self.point} over the dictionary ({lik} likelihood with each voxel's noise "
                   f"level, prior {prior}, local-linear regression adjustment between entries), with "
                   "95 % credible intervals that include the dictionary's cross-validated model error"
                   + (", widened where its left-out structures at the session's noise level needed it to be covered"
                      " 95 % of the time" if self.use_model_error else ""),
            parameters={"FitMethod": f"posterior {self.point}, {lik} likelihood with the voxel's sigma, prior {prior} "
                                     "inside the bounds, regression adjustment "
                                     f"({N_ADJUST} entries, {N_COMPONENTS} principal components)",
                        "NoiseModel": lik,
                        "Prior": self.prior,
                        "PointPrior": {n: self.point_prior.get(n, self.prior) for n in self.names},
                        "Uncertainty": "desc-sd: posterior SD incl. the dictionary's model error and the interval calibration; desc-ci95lo/"
                                       "desc-ci95hi: 95 % credible interval; desc-contraction: posterior contraction",
                        "Bounds": self.user_bounds or "dictionary range",
                        "FittedB": b_range(self.dictionary.protocol.b)},
            references=["beaumont2002"])

    def predict(self, params, protocol=None) -> np.ndarray:
        """Noise-free signal [V, M] at params [V, P] (physical units): the dictionary is this model's forward
        model, so the signal of the entry nearest to params (free parameters, each scaled by its entries'
        range)."""
        self._own_measurements(protocol, self.dictionary.protocol)
        return nearest_entry_signals(self.dictionary.params, self.signals, params, self.free)

    def fitted_signal(self, data, params=None, sigma=None) -> np.ndarray:
        """Posterior-mean signal [V, M] of the voxels data [V, M] over the retained entries (σ [V] or
        [V, M] or None): what the estimate was read from (params, its summary, is not needed)."""
        y = np.atleast_2d(np.asarray(data, float))
        sig = None if sigma is None else np.asarray(sigma, float).reshape(len(y), -1).mean(1)
        floor = np.zeros(len(y)) if sig is None or self.noise == "gaussian" else noise_floor(sig, self.n_averages)
        cost = self._entry_costs(y, floor)
        best = cost.min(1)
        var = np.maximum(best / y.shape[1], 1e-12) if sig is None else sig ** 2
        w = np.exp(-(cost - best[:, None]) / (2 * var[:, None]))
        return (w / w.sum(1, keepdims=True)) @ self.signals


def nearest_entry_signals(entry_params: np.ndarray, signals: np.ndarray, params, free) -> np.ndarray:
    """signals [V, M] of the entries (entry_params [E, P], signals [E, M]) nearest to params [V, P] over the
    columns free, each scaled by its entries' range (in blocks, so memory stays bounded)."""
    params = np.atleast_2d(np.asarray(params, float))
    free = list(free)
    span = np.ptp(entry_params[:, free], axis=0)
    span = np.where(span > 0, span, 1.0)
    z_entries = entry_params[:, free] / span
    out = np.empty((len(params), signals.shape[1]))
    for v0 in range(0, len(params), 256):
        z = params[v0:v0 + 256, free] / span
        d2 = (z ** 2).sum(1)[:, None] - 2 * z @ z_entries.T + (z_entries ** 2).sum(1)[None, :]
        out[v0:v0 + 256] = signals[np.argmin(d2, axis=1)]
    return out


#: Contraction below which a parameter counts as not informed by the data; above which as well informed.
WEAKLY_INFORMED, WELL_INFORMED = 0.1, 0.5
#: The one definition of identifiability of every model (tissue posterior, joint fit, IVIM), as the sidecars
#: and the report state it.
IDENTIFIABILITY = ("posterior contraction 1 - var_post/var_prior on the estimator's scale (log for vm, vs, anb, "
                   "D* and the log-scaled tissue parameters), var_post the variance behind the 95 % interval: "
                   f"informed >= {WELL_INFORMED:g} (the interval at most {np.sqrt(1 - WELL_INFORMED):.2f} of the "
                   f"prior's width), weakly informed {WEAKLY_INFORMED:g}-{WELL_INFORMED:g}, not informed < "
                   f"{WEAKLY_INFORMED:g}")


def contraction(var_post: np.ndarray, var_prior: np.ndarray) -> np.ndarray:
    """1 - var_post / var_prior clipped to [0, 1] (both on the estimator's scale; 1 where the prior has no
    variance): IDENTIFIABILITY's contraction, for every model."""
    var_prior = np.asarray(var_prior, float)
    safe = np.where(var_prior > 0, var_prior, 1.0)
    return np.where(var_prior > 0, np.clip(1 - np.asarray(var_post, float) / safe, 0.0, 1.0), 1.0)


def identifiability_summary(contraction: np.ndarray, names) -> dict:
    """Per parameter: median and 10th/90th percentiles of the contraction [V, P] and a verdict."""
    out = {}
    for j, name in enumerate(names):
        c = contraction[:, j]
        c = c[np.isfinite(c)]
        if not c.size:
            out[name] = {"median": None, "p10": None, "p90": None, "verdict": "no voxels"}
            continue
        med = float(np.median(c))
        verdict = ("not informed by the data" if med < WEAKLY_INFORMED else
                   "weakly informed" if med < WELL_INFORMED else "informed")
        out[name] = {"median": round(med, 4), "p10": round(float(np.percentile(c, 10)), 4),
                     "p90": round(float(np.percentile(c, 90)), 4), "verdict": verdict}
    return out


def smallest_per_row(cost: np.ndarray, n: int) -> np.ndarray:
    """Column indices [V, n] of each row's n smallest values (unordered, numpy's argpartition: the same as one
    call), the rows split over numba's thread count (argpartition releases the GIL; the selection of the
    retained entries is a quarter of the posterior's time with a large dictionary)."""
    threads = min(numba.get_num_threads(), len(cost) // 32)
    if threads <= 1:
        return np.argpartition(cost, n - 1, axis=1)[:, :n]
    edges = np.linspace(0, len(cost), threads + 1).astype(int)
    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(lambda ab: np.argpartition(cost[ab[0]:ab[1]], n - 1, axis=1)[:, :n], zip(edges[:-1], edges[1:]))
        return np.concatenate(list(parts))


def _squared_floor(floor: np.ndarray, m: int) -> np.ndarray:
    """The kernels' flo2 [V, M]: each voxel's squared noise floor on each of its m measurements."""
    return np.ascontiguousarray(np.repeat((floor ** 2)[:, None], m, 1))


def weighted_quantile(samples: np.ndarray, w: np.ndarray, q: float) -> np.ndarray:
    """q-quantile [V, P] of weighted samples [V, n, P] (weights [V, n] summing to 1), interpolated
    between the samples' mid-cumulative weights."""
    order = np.argsort(samples, axis=1)
    xs = np.take_along_axis(samples, order, 1)
    ws = np.take_along_axis(np.broadcast_to(w[:, :, None], samples.shape), order, 1)
    cum = np.cumsum(ws, axis=1) - 0.5 * ws
    i = np.clip((cum < q).sum(1), 1, samples.shape[1] - 1)            # first index with cum >= q
    c0 = np.take_along_axis(cum, (i - 1)[:, None], 1)[:, 0]
    c1 = np.take_along_axis(cum, i[:, None], 1)[:, 0]
    x0 = np.take_along_axis(xs, (i - 1)[:, None], 1)[:, 0]
    x1 = np.take_along_axis(xs, i[:, None], 1)[:, 0]
    frac = np.clip((q - c0) / np.maximum(c1 - c0, 1e-300), 0.0, 1.0)
    return x0 + frac * (x1 - x0)


def shared_weighted_quantiles(values: np.ndarray, w: np.ndarray, qs) -> np.ndarray:
    """weighted_quantile for samples shared by every voxel (values [n, P], weights [V, n] summing to 1): the
    qs-quantiles [len(qs), V, P], the same numbers, with each parameter's values sorted once instead of
    once per voxel."""
    qs = np.atleast_1d(np.asarray(qs, float))
    n, n_p = values.shape
    out = np.empty((len(qs), len(w), n_p))
    rows = np.arange(len(w))
    for j in range(n_p):
        order = np.argsort(values[:, j], kind="stable")
        xs, ws = values[order, j], w[:, order]
        cum = np.cumsum(ws, axis=1) - 0.5 * ws
        for k, q in enumerate(qs):
            i = np.clip((cum < q).sum(1), 1, n - 1)
            c0, c1 = cum[rows, i - 1], cum[rows, i]
            frac = np.clip((q - c0) / np.maximum(c1 - c0, 1e-300), 0.0, 1.0)
            out[k, :, j] = xs[i - 1] + frac * (xs[i] - xs[i - 1])
    return out


