"""Joint tissue + vascular estimator on every measurement (issue #21).

Forward model of a voxel's b0-normalised signal (each TE group normalised by its own b = 0, so each
group has its own S0, whose estimate's noise is a common scale error of the group, part of the noise
model). Without T2s fV is the blood's signal fraction; with both (relaxation_weights) its volume fraction:

    y_m = (1 - fV) · S_tissue,m(fin, vCS, D0in, D0ex, κ) + fV · S_flow,m(vm, vs, anb)

with S_tissue from the tissue (Histo-μSim) dictionary and S_flow from the flow (SpinFlowSim) dictionary,
both matched to the same measurements, low b included. Estimation, per voxel:

1. Tissue candidates: the N_TISSUE_CANDIDATES tissue entries of least joint misfit
   min_{f, r} |y - (1 - f) t - f p_r|² against FLOW_PROTOTYPES representative flow signals p_r (group means
   of the flow dictionary ranked by attenuation), f in [0, fv_max], from voxel-independent Gram terms (every entry,
   O(E·(M + R)) per voxel). The candidates only serve step 2.
2. Vascular posterior: every (tissue candidate, flow entry) pair, with fV marginalised analytically (the
   model is linear in fV: a truncated Gaussian on [0, fv_max] per pair), Gaussian likelihood on the
   floor-corrected data (kernels.joint_pair_moments). The prior of fV (VascularPrior: a point mass on "no
   vascular signal" and a truncated exponential on (0, fv_max]) is the session's own, of greatest marginal
   likelihood over its voxels (estimate_vascular_prior, EM), not a constant. This gives the posterior of the
   flow entries (vm, vs, anb given a vascular signal: posterior mean on the estimator's scale, SD, 95 %
   interval, contraction) and of fV (mean, SD, interval, contraction against the prior's variance).
3. Tissue posterior: the data with the vascular component's posterior mean removed (every voxel, in
   proportion to its posterior: no threshold),
   y_T = (y - E[fV·S_flow]) / (1 - E[fV]), noise σ/(1 - E[fV]), go to the tissue PosteriorModel
   (regression adjustment, model error, intervals, identifiability) on the measurements with
   b >= tissue_b_min (slow flow's signal there is removed instead of biasing D0ex); the uncertainty of
   1/(1 - fV) enters as an unknown common scale of the voxel's signal (PosteriorModel's scale_var).

With fv_max = 0 the joint fit is the tissue-only posterior on the same measurements.
"""

from __future__ import annotations

import numba
import numpy as np

from ..dictionary import Dictionary
from . import kernels
from .dictfit import DictionaryFit, _backend, on_backend
from .likelihood import noise_floor
from .model import (EXIT_BACKGROUND, EXIT_FAILED, EXIT_OK, Description, Fit, Model, b_range, fit_plan, voxel_chunks,
                    voxel_table)
from .likelihood import Z95
from .posterior import (PosteriorModel, contraction, dictionary_leaves, leaf_balls, log_scaled,
                        shared_weighted_quantiles)

#: Tissue entries per voxel that enter the vascular posterior (step 2).
N_TISSUE_CANDIDATES = 16
#: Leaves of the candidates' tree per group of consecutive leaves (a subtree) bounded first (_profile_tree).
PROFILE_GROUP = 32
#: Representative flow signals (flow_prototypes: group means) against which the tissue candidates are chosen.
FLOW_PROTOTYPES = 4
#: Smallest b [s/mm²] of the tissue posterior (step 3): below it the tissue carries little information and
#: the removed vascular component most of the uncertainty.
TISSUE_B_MIN = 250.0
#: Largest vascular signal fraction of the flat prior.
FV_MAX = 0.3
#: Prior probability of no vascular signal (fV = 0) where the session does not inform it (fewer than
#: PRIOR_MIN_VOXELS voxels, or p_zero given): the blood-free voxel is a model of its own, so that tissue
#: without blood is fitted as tissue only. Otherwise the session's own estimate (VascularPrior) is used.
P_ZERO = 0.95
#: Prior odds against a vascular signal of the tissue step's removal (a decision, not the fV prior): the tissue
#: data lose the vascular component's conditional mean times P(vascular | data) computed at these odds, a
#: continuous weight (no threshold). A false removal costs a blood-free voxel's tissue estimate more than a small
#: true fV left in costs a vascular one (the tissue posterior absorbs a (1 - fV) scale as model error), so the
#: tissue step asks more evidence than the fV map does: the Bayes action under that asymmetric loss. 0.99 keeps
#: every tissue ρ within 0.01 and median error within 2 % on blood-free real histology at SNR 50 and 20, where
#: the session's own prior alone (removal in proportion to P(vascular | data) under it) lost fin ρ 0.025 and
#: vCS_cyl median error 5 % at SNR 20, the real-histology signals' low-b misfit read as fV ~ 0.06 in 40 % of
#: the voxels (benchmarks/default_on_histology.py; docs/benchmarks.md, issue #38).
TISSUE_REMOVAL_P_ZERO = 0.99
#: Mask voxels (at most; evenly spaced, so the choice is deterministic) whose marginal likelihood sets the
#: session's vascular prior (estimate_vascular_prior).
PRIOR_VOXELS = 1000
#: Fewer fitted voxels than this: the vascular prior stays the constant (P_ZERO, flat slab), as the sidecar says.
PRIOR_MIN_VOXELS = 50
#: EM iterations of the vascular prior at most, and its tolerance (on P(no vascular signal) and on the slab's
#: mean fV as a fraction of fv_max).
PRIOR_EM_ITERATIONS, PRIOR_EM_TOLERANCE = 40, 1e-4
#: Range of the slab's exponential rate λ·fv_max (negative: density rising towards fv_max).
PRIOR_RATE_RANGE = (-20.0, 400.0)
#: Largest voxel x candidate x flow-entry work array of one batch [elements].
JOINT_BATCH_ELEMENTS = 8_000_000


def flow_prototypes(signals: np.ndarray, k: int) -> np.ndarray:
    """k representative flow signals [k, M]: the mean signals of k equal-count groups of the entries ranked by
    their mean signal (slow to fast attenuation), or the signals themselves when there are no more than k.
    Continuous in the signals: a small change (another Monte Carlo realisation of the same flow dictionary)
    moves each prototype a little, where k-means centres could jump to another clustering and change every
    voxel's tissue candidates."""
    signals = np.asarray(signals, np.float64)
    if len(signals) <= k:
        return np.ascontiguousarray(signals)
    order = np.argsort(signals.mean(1), kind="stable")
    return np.ascontiguousarray(np.stack([signals[g].mean(0) for g in np.array_split(order, k)]))


def relaxation_weights(protocol, t2_tissue_ms: float | None, t2_blood_ms: float | None) -> np.ndarray:
    """a_k = e^{-TE_k (1/T2_blood - 1/T2_tissue)} [M] (TE, T2 in ms): blood's signal relative to tissue's
    at each measurement's echo time; all 1 unless both T2s are given (fV is then the signal fraction)."""
    n = len(protocol)
    if t2_tissue_ms is None and t2_blood_ms is None:
        return np.ones(n)
    if t2_tissue_ms is None or t2_blood_ms is None or not (t2_tissue_ms > 0 and t2_blood_ms > 0):
        raise ValueError("give both T2s (tissue and blood, > 0 ms) or neither")
    te = np.asarray(protocol.echo_time_ms, float)
    if not np.all(np.isfinite(te)):
        raise ValueError("the T2 correction needs every measurement's echo time")
    return np.exp(-te * (1.0 / t2_blood_ms - 1.0 / t2_tissue_ms))


def normalisation_groups(protocol) -> tuple:
    """(group index [M], number of groups): the measurements b0-normalised together, one group per
    (series, TE); an unknown TE counts as one TE."""
    te = np.where(np.isfinite(protocol.echo_time_ms), np.round(protocol.echo_time_ms, 3), -1.0)
    keys = np.stack([protocol.series.astype(float), te], 1)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    return np.ascontiguousarray(inverse.ravel().astype(np.int64)), len(uniq)


class VascularPrior:
    """The prior of fV: a point mass p_zero at fV = 0 (no vascular signal) and 1 - p_zero on (0, fv_max] with
    density ∝ e^{-rate·fV} (rate [1/fraction]; 0: flat). source: 'session' (maximum marginal likelihood over
    the session's voxels, estimate_vascular_prior), 'constant' (too few voxels) or 'given'."""

    def __init__(self, p_zero: float, rate: float, fv_max: float, source: str, n_voxels: int = 0,
                 iterations: int = 0, converged: bool = True):
        self.p_zero, self.rate, self.fv_max, self.source = float(p_zero), float(rate), float(fv_max), source
        self.n_voxels, self.iterations, self.converged = int(n_voxels), int(iterations), bool(converged)

    def slab_moments(self) -> tuple:
        """(E[fV], E[fV²]) of the slab (fV > 0)."""
        if self.fv_max <= 0:
            return 0.0, 0.0
        return kernels.truncated_exponential_moments(self.rate, self.fv_max)

    def moments(self) -> tuple:
        """(E[fV], Var[fV]) of the whole prior."""
        m1, m2 = self.slab_moments()
        mean, second = (1 - self.p_zero) * m1, (1 - self.p_zero) * m2
        return mean, max(second - mean ** 2, 0.0)

    def to_dict(self) -> dict:
        """The sidecar's VascularPrior."""
        slab_mean = self.slab_moments()[0]
        how = {"session": f"maximum marginal likelihood (EM) over {self.n_voxels} of the session's voxels",
               "constant": f"the constant default: only {self.n_voxels} voxels, fewer than {PRIOR_MIN_VOXELS}, to "
                           "estimate it from",
               "given": "given"}[self.source]
        return {"PNoVascularSignal": round(self.p_zero, 4), "SlabMeanFv": round(slab_mean, 4),
                "SlabRatePerUnitFv": round(self.rate, 3), "FvMax": self.fv_max, "Source": how,
                "Voxels": self.n_voxels, "EMIterations": self.iterations, "Converged": self.converged}

    def sentence(self) -> str:
        """The prior in words (methods text)."""
        slab_mean = self.slab_moments()[0]
        where = {"session": f"estimated from the session's voxels (maximum marginal likelihood over {self.n_voxels} "
                            "voxels)",
                 "constant": "a constant (too few voxels to estimate it from the session)",
                 "given": "as given"}[self.source]
        return (f"a prior of {self.p_zero:.3g} on fV = 0 (no vascular signal) and {1 - self.p_zero:.3g} on "
                f"(0, {self.fv_max:g}] with a truncated-exponential density of mean {slab_mean:.3g}, {where}")


def estimate_pi_zero(bayes_factor: np.ndarray, start: float, tol: float = 1e-7, iterations: int = 500) -> float:
    """The P(no vascular signal) of greatest marginal likelihood for voxels of Bayes factors (slab against
    spike, independent of the prior's mixing weight) [V]: EM's fixed point π = mean(π / (π + (1 - π) BF))."""
    pi = float(start)
    bf = np.asarray(bayes_factor, float)
    for _ in range(iterations):
        new = float(np.mean(pi / (pi + (1 - pi) * bf)))
        if abs(new - pi) < tol:
            return new
        pi = new
    return pi


def truncated_exponential_rate(mean: float, fv_max: float) -> float:
    """The rate λ [1/unit fV] of the truncated exponential on [0, fv_max] whose mean is ``mean``
    (PRIOR_RATE_RANGE bounds λ·fv_max)."""
    from scipy.optimize import brentq
    lo, hi = (u / fv_max for u in PRIOR_RATE_RANGE)
    f = lambda lam: kernels.truncated_exponential_moments(lam, fv_max)[0] - mean  # noqa: E731
    if f(lo) <= 0:
        return lo
    if f(hi) >= 0:
        return hi
    return float(brentq(f, lo, hi, xtol=1e-10 / fv_max))


class JointFit(Fit):
    """The joint fit: ``tissue`` (the tissue PosteriorModel's DictionaryFit, on the devascularised data),
    ``vascular`` (a DictionaryFit of vm, vs, anb and fV) and ``vascular_signal`` [..., M], the posterior
    mean of fV·S_flow (the report's two compartments). As a Fit: ``names`` the tissue's then fV and the flow's,
    ``params``/``sd`` both parts', ``exitcode`` the tissue's (a voxel whose joint fit failed fails there too),
    ``info`` the tissue's with the vascular part's under 'vascular'."""

    def __init__(self, tissue: DictionaryFit, vascular: DictionaryFit, vascular_signal: np.ndarray, *,
                 model: "JointModel" = None, data: np.ndarray = None, sigma=None):
        super().__init__(model=model, data=data, sigma=sigma)
        self.tissue, self.vascular, self.vascular_signal = tissue, vascular, vascular_signal
        self.names = list(dict.fromkeys(list(tissue.names) + ["fV"] + list(vascular.names)))
        self.units = {**dict(tissue.units), **dict(vascular.units)}
        self.params = {**tissue.params, **vascular.params}
        self.sd = {**tissue.sd, **vascular.sd}
        self.exitcode = tissue.exitcode
        self.info = {**tissue.info, "vascular": vascular.info}

    def maps(self) -> dict:
        return {**self.tissue.maps(), **{f"vascular:{k}": v for k, v in self.vascular.maps().items()}}

    def residual(self) -> np.ndarray:
        return self.tissue.residual()

    def compartments(self, index) -> tuple:
        """((1 - fV)·S_tissue, fV·S_flow) [n, M] of the voxels at ``index``: the fitted signal's two parts."""
        measured = self.data[index].astype(float)
        sigma = None if self.sigma is None else np.broadcast_to(np.asarray(self.sigma, float),
                                                                self.data.shape[:-1])[index]
        vascular = self.vascular_signal[index]
        return self.model.tissue_component(measured, vascular, self.vascular.params["fV"][index], sigma), vascular

    def predict(self, index) -> np.ndarray:
        """Fitted signal [n, M] of the voxels at ``index``: the tissue compartment plus the vascular one."""
        tissue, vascular = self.compartments(index)
        return tissue + vascular

    def examples(self, protocol_rows: list, n: int = 4) -> dict:
        """JSON-ready example voxels (the tissue fit's choice): the measured signal on every measurement, the
        joint model's tissue compartment (1 - fV)·S_tissue, vascular compartment fV·S_flow and their sum."""
        idx = self.tissue.example_voxels(n)
        if not len(idx):
            return {"protocol": protocol_rows, "voxels": []}
        sel = tuple(idx.T)
        measured = self.data[sel].astype(float)
        tissue, vascular = self.compartments(sel)
        names = list(self.tissue.names) + ["fV", "vm"]
        params = {**self.tissue.params, **self.vascular.params}
        units = {**dict(self.tissue.units), **dict(self.vascular.units)}
        return {"protocol": protocol_rows, "units": {nm: str(units.get(nm, "")) for nm in names},
                "voxels": [{"ijk": [int(v) for v in ijk], "measured": measured[k].tolist(),
                            "fitted": (tissue[k] + vascular[k]).tolist(), "tissue": tissue[k].tolist(),
                            "vascular": vascular[k].tolist(),
                            "params": {nm: float(params[nm][tuple(ijk)]) for nm in names if nm in params}}
                           for k, ijk in enumerate(idx)]}


class JointModel(Model):
    """tissue, flow: dictionaries matched to the same measurements (every b > 0 of the voxels' data);
    fv_max: largest fV of the flat prior; b0_noise_ratio: SD of each normalisation group's b = 0 estimate
    over the measurements' σ (scalar or one per group of normalisation_groups; 1: one b = 0 volume per
    group, as noisy as a measurement; 0: exact normalisation); t2_tissue_ms, t2_blood_ms: both or neither
    (relaxation_weights: fV becomes the volume fraction, the T2 difference corrected to first order in fV);
    n_candidates: tissue entries per voxel in the vascular posterior; p_zero, fv_rate: the fV prior
    (VascularPrior) as given, or (p_zero None) estimated from each fit's voxels;
    noise, n_averages, bounds, point, chunk_size, prior, point_prior: as
    PosteriorModel (tissue)."""

    def __init__(self, tissue: Dictionary, flow: Dictionary, fv_max: float = FV_MAX,
                 n_candidates: int = N_TISSUE_CANDIDATES, tissue_b_min: float = TISSUE_B_MIN,
                 b0_noise_ratio=1.0, t2_tissue_ms: float | None = None, t2_blood_ms: float | None = None,
                 noise: str = "offset-gaussian", n_averages: float = 1.0, bounds: dict | None = None,
                 point: str = "median", chunk_size: int = 2000, device: str = "cpu", prior: str = "entries",
                 point_prior: dict | None = None, p_zero: float | None = None, fv_rate: float = 0.0):
        if len(tissue.protocol) != len(flow.protocol):
            raise ValueError(f"the tissue dictionary has {len(tissue.protocol)} measurements, the flow "
                             f"dictionary {len(flow.protocol)}: match both to the same protocol")
        if not 0.0 <= fv_max < 1.0:
            raise ValueError(f"fv_max must be in [0, 1), not {fv_max}")
        self.groups, self.n_groups = normalisation_groups(tissue.protocol)
        self.b0_noise_ratio = np.broadcast_to(np.asarray(b0_noise_ratio, float), (self.n_groups,)).copy()
        self.tissue_b_min = float(tissue_b_min)
        self.tissue_columns = np.flatnonzero(tissue.protocol.b >= tissue_b_min)
        if self.tissue_columns.size == 0:
            raise ValueError(f"no measurement with b >= {tissue_b_min:g} s/mm² for the tissue posterior")
        self.tissue_model = PosteriorModel(tissue.measurements(self.tissue_columns), chunk_size=chunk_size,
                                           point=point, bounds=bounds, noise=noise, n_averages=n_averages,
                                           device=device, prior=prior, point_prior=point_prior)
        self.flow = flow
        self.requested_device = device
        self.backend = _backend(device, "joint")
        self.device = "cpu" if self.backend is kernels else "gpu"
        self.fv_max, self.noise, self.n_averages = float(fv_max), noise, float(n_averages)
        if p_zero is not None and not 0.0 <= p_zero < 1.0:
            raise ValueError(f"p_zero must be in [0, 1), not {p_zero}")
        self.given_prior = None if p_zero is None else VascularPrior(p_zero, fv_rate, self.fv_max, "given")
        #: the fV prior of the last fit (the given one, or the session's estimate)
        self.prior = self.given_prior or VascularPrior(P_ZERO, 0.0, self.fv_max, "constant")
        within = tissue.within(bounds) if bounds else tissue
        self.tissue_signals = np.ascontiguousarray(within.signals, np.float64)
        self.tissue_params = within.params
        #: the Fit's parameter names: the tissue's, then fV and the flow's
        self.names = list(dict.fromkeys(list(tissue.names) + ["fV"] + list(flow.names)))
        self.flow_signals = np.ascontiguousarray(flow.signals, np.float64)
        self.te_weight = relaxation_weights(tissue.protocol, t2_tissue_ms, t2_blood_ms)
        self.t2 = (t2_tissue_ms, t2_blood_ms)
        self.flow_sq = ((self.flow_signals * self.te_weight) ** 2).sum(1)
        self.flow_t = np.ascontiguousarray(self.flow_signals.T)
        # the tissue candidates: least joint misfit with FLOW_PROTOTYPES representative flow signals
        self.prototypes = flow_prototypes(self.flow_signals, FLOW_PROTOTYPES)
        self.proto_sq = (self.prototypes ** 2).sum(1)
        self.tissue_proto = np.ascontiguousarray(self.tissue_signals @ self.prototypes.T)
        self.pair_sq = np.ascontiguousarray(self.proto_sq[None, :] - 2 * self.tissue_proto
                                            + (self.tissue_signals ** 2).sum(1)[:, None])   # |v_r - t|²
        self.tissue_t = np.ascontiguousarray(self.tissue_signals.T)
        self.tissue_sq = (self.tissue_signals ** 2).sum(1)
        self.n_candidates = int(min(n_candidates, len(self.tissue_signals)))
        self._tree = None   # _profile_tree
        if self.backend is not kernels and (self.n_candidates > self.backend.MAX_CANDIDATES
                                            or len(self.prototypes) > self.backend.MAX_PROTOTYPES):
            self.backend, self.device = kernels, "cpu"   # more than a GPU thread holds
        self.chunk_size = max(1, min(int(chunk_size),
                                     JOINT_BATCH_ELEMENTS // max(1, self.n_candidates * len(self.flow_signals))))
        p = flow.params
        self.flow_log = log_scaled(p)
        self.flow_values = np.where(self.flow_log, np.log(np.where(p > 0, p, 1.0)), p)
        self.flow_free = np.flatnonzero(np.ptp(p, axis=0) > 0)
        self.flow_prior_var = self.flow_values.var(0)   # on the estimator's scale, as the contraction

    # ---- the vascular posterior (steps 1-2) ----------------------------------------------------------------
    def vascular_posterior(self, y: np.ndarray, sigma: np.ndarray, prior: VascularPrior | None = None) -> dict:
        """Steps 1-2 for voxels y [V, M] (σ [V]) under ``prior`` (default: self.prior): 'w_flow' [V, Kf], 'fv'
        (E[fV], E[fV²], P(fV = 0), log Bayes factor of a vascular signal) [V, 4], 'vascular_signal' [V, M] =
        E[fV·S_flow]."""
        clean = self._clean(y, sigma)
        return self._pairs(clean, sigma, self._candidates(clean), prior or self.prior)

    def _clean(self, y, sigma) -> np.ndarray:
        """The floor-corrected data sqrt(max(y² - floor², 0)) [V, M]."""
        floor = np.zeros(len(y)) if self.noise == "gaussian" else noise_floor(sigma, self.n_averages)
        return np.ascontiguousarray(np.sqrt(np.maximum(y ** 2 - (floor ** 2)[:, None], 0.0)))

    def _candidates(self, clean) -> np.ndarray:
        """Step 1: the tissue candidates [V, n] of each voxel, in entry order (whatever chose them)."""
        top = np.empty((len(clean), self.n_candidates), np.int64)

        def on_cpu():   # a tree over the entries: only the leaves that can hold a candidate are visited
            kernels.joint_profile_leaves(clean, *self._profile_tree(), self.prototypes, self.fv_max,
                                         numba.get_num_threads(), top)
        on_backend(self, "joint fit", lambda: self.backend.joint_profile_top(
            clean, self.tissue_t, self.tissue_sq, self.tissue_proto, self.pair_sq, self.prototypes, self.fv_max, top),
            on_cpu)
        return np.sort(top, axis=1)

    def _profile_tree(self) -> tuple:
        """kernels.joint_profile_leaves' tables (built at the first CPU fit, then kept): the tissue entries in
        the leaf order of a tree over their signals (posterior.dictionary_leaves) with their Gram terms, each
        leaf's ball and each group's of PROFILE_GROUP consecutive leaves, and the prototypes relative to their
        centres."""
        if self._tree is None:
            perm, leaf_start = dictionary_leaves(self.tissue_signals)
            rows = np.ascontiguousarray(self.tissue_signals[perm])
            centres, radii = leaf_balls(rows, leaf_start)
            group_start = np.r_[np.arange(0, len(radii), PROFILE_GROUP), len(radii)]   # consecutive leaves: subtrees
            g_centres, g_radii = leaf_balls(rows, leaf_start[group_start])

            def towards_prototypes(c):   # v_r - centre [L, R, M] and its squared norms [L, R]
                w = np.ascontiguousarray(self.prototypes[None, :, :] - c[:, None, :])
                return w, (w ** 2).sum(2)
            self._tree = (rows, perm, leaf_start, self.tissue_sq[perm], np.ascontiguousarray(self.tissue_proto[perm]),
                          np.ascontiguousarray(self.pair_sq[perm]), centres, radii, *towards_prototypes(centres),
                          group_start, g_centres, g_radii, *towards_prototypes(g_centres))
        return self._tree

    def _pairs(self, clean, sigma, top, prior: VascularPrior) -> dict:
        """The pair posterior (kernels.joint_pair_moments) with the tissue candidates top [V, n]."""
        v, n = top.shape
        w_flow = np.empty((v, len(self.flow_signals)))
        g_flow = np.empty_like(w_flow)
        f_mom = np.empty((v, 4))
        sig2 = np.asarray(sigma, float) ** 2
        tau2 = sig2[:, None] * self.b0_noise_ratio[None, :] ** 2
        yy = np.stack([(clean[:, self.groups == g] ** 2).sum(1) for g in range(self.n_groups)], 1)
        kappa = np.ascontiguousarray(tau2 / (sig2[:, None] + tau2 * yy))
        args = (clean, sig2, np.ascontiguousarray(self.tissue_signals[top]), self.flow_t, self.flow_sq, self.fv_max,
                self.groups, kappa, self.te_weight, w_flow, g_flow, f_mom)
        work = (v, n, len(self.flow_signals))   # log_w: work space, on the device where the GPU runs it
        on_backend(self, "joint fit", lambda: self.backend.joint_pair_moments(*args, work, prior.p_zero, prior.rate),
                   lambda: kernels.joint_pair_moments(*args, np.empty(work), prior.p_zero, prior.rate))
        return {"w_flow": w_flow, "fv": f_mom, "vascular_signal": (g_flow @ self.flow_signals) * self.te_weight}

    def estimate_vascular_prior(self, y: np.ndarray, sigma: np.ndarray) -> VascularPrior:
        """The session's fV prior (VascularPrior) of greatest marginal likelihood over voxels y [V, M] (σ [V];
        at most PRIOR_VOXELS of them, evenly spaced), by EM: the E-step is the pair posterior under the
        current prior; P(no vascular signal) is then the fixed point over the voxels' Bayes factors
        (estimate_pi_zero, exact for the current slab) and the slab's rate matches the voxels' posterior mean
        fV given a vascular signal (the truncated exponential's M-step). The constant (P_ZERO, flat) where
        fewer than PRIOR_MIN_VOXELS voxels inform it."""
        if self.given_prior is not None:
            return self.given_prior
        n = len(y)
        if n < PRIOR_MIN_VOXELS or self.fv_max <= 0:
            return VascularPrior(P_ZERO, 0.0, self.fv_max, "constant", n)
        pick = np.unique(np.linspace(0, n - 1, min(n, PRIOR_VOXELS)).round().astype(np.int64))
        clean = self._clean(y[pick], sigma[pick])
        top = self._candidates(clean)
        prior = VascularPrior(0.5, 0.0, self.fv_max, "session", len(pick))
        for it in range(1, PRIOR_EM_ITERATIONS + 1):
            fv = self._pairs(clean, sigma[pick], top, prior)["fv"]
            bf = np.exp(np.clip(fv[:, 3], -700.0, 700.0))   # the kernel's, exact where P(fV = 0 | data) cancels
            slab_mass = np.maximum(1 - fv[:, 2], 1e-300)
            slab_mean = np.clip(fv[:, 0] / slab_mass, 0.0, self.fv_max)   # E[fV | data, fV > 0]
            pi = min(estimate_pi_zero(bf, prior.p_zero), 1.0 - 1e-6)
            resp = 1 - pi / (pi + (1 - pi) * bf)   # P(fV > 0 | data) under the new mixing weight
            mean = float(np.sum(resp * slab_mean) / max(np.sum(resp), 1e-300)) if resp.sum() > 0 else self.fv_max / 2
            rate = truncated_exponential_rate(min(max(mean, 1e-6 * self.fv_max), (1 - 1e-6) * self.fv_max),
                                              self.fv_max)
            new = VascularPrior(pi, rate, self.fv_max, "session", len(pick), it)
            done = (abs(new.p_zero - prior.p_zero) < PRIOR_EM_TOLERANCE and
                    abs(new.slab_moments()[0] - prior.slab_moments()[0]) < PRIOR_EM_TOLERANCE * self.fv_max)
            prior = new
            if done:
                return prior
        prior.converged = False
        return prior

    def flow_summaries(self, w_flow: np.ndarray) -> tuple:
        """(estimate, SD, 95 % low, 95 % high, contraction) [V, P] of the flow parameters in physical units
        from the flow entries' posterior weights (posterior mean on the estimator's scale)."""
        vals = self.flow_values
        mean = w_flow @ vals
        var = np.maximum(w_flow @ vals ** 2 - mean ** 2, 0.0)
        lo_t, hi_t = shared_weighted_quantiles(vals, w_flow, (0.025, 0.975))

        def back(t):   # the estimator's scale -> physical units (exp only of the log-scaled parameters)
            t = t.copy()
            t[:, self.flow_log] = np.exp(t[:, self.flow_log])
            return t
        est = back(mean)
        sd = np.where(self.flow_log, np.sqrt(var) * est, np.sqrt(var))
        return est, sd, back(lo_t), back(hi_t), contraction(var, self.flow_prior_var)

    def fv_summaries(self, f_mom: np.ndarray) -> tuple:
        """(estimate, SD, 95 % low, 95 % high, contraction) [V] of fV from its posterior moments [V, 2+]
        (contraction against the variance of the prior that ran, self.prior)."""
        est = f_mom[:, 0]
        sd = np.sqrt(np.maximum(f_mom[:, 1] - est ** 2, 0.0))
        prior_var = self.prior.moments()[1]
        con = contraction(sd ** 2, prior_var) if self.fv_max > 0 else np.ones_like(est)
        return est, sd, np.clip(est - Z95 * sd, 0.0, self.fv_max), np.clip(est + Z95 * sd, 0.0, self.fv_max), con

    # ---- Model API -------------------------------------------------------------------------------------------
    def blas_threads(self, n_threads: int) -> int:
        # the candidates, the pairs and the tissue step are numba kernels, each after a small product: BLAS on one
        # thread is 15-20 % faster on 2 cores (benchmarks/posterior_throughput.py --model joint)
        return 1

    def jit_kernels(self) -> list:
        return [kernels.joint_profile_leaves, kernels.joint_pair_moments] + self.tissue_model.jit_kernels(common_scale=True)

    def fit(self, data, mask=None, sigma=None, progress=None) -> JointFit:
        """data [..., M] b0-normalised; mask [...]; sigma [...] (normalised noise SD; None: estimated from
        the tissue-only residual)."""
        data, shape, flat, mask = voxel_table(data, mask, len(self.flow.protocol), "dictionaries")
        m = flat.shape[1]
        in_mask, valid = fit_plan(flat, mask)
        sig = None if sigma is None else np.broadcast_to(np.asarray(sigma, float), shape).ravel()
        if sig is not None:
            valid &= np.isfinite(sig) & (sig > 0)
        todo = np.flatnonzero(valid)
        sig_all = sig if sig is not None else self._residual_sigma(flat, todo)
        self.prior = self.estimate_vascular_prior(flat[todo], sig_all[todo])
        v_out = self._empty_vascular(flat.shape[0], in_mask)
        y_t = flat.copy()
        y_t[in_mask & ~valid] = np.nan   # the joint fit failed there (NaN, non-positive data or σ): so does its tissue part
        sig_t = np.full(flat.shape[0], np.nan) if sig is None else sig.copy()
        vasc_sig = np.zeros_like(flat)
        scale_var = np.zeros(flat.shape[0])
        for idx in voxel_chunks(todo, self.chunk_size, progress):
            self._vascular_chunk(flat[idx], sig_all[idx], idx, v_out, vasc_sig, y_t, sig_t, scale_var)
        cols = self.tissue_columns
        tissue = self.tissue_model.fit(y_t[:, cols].reshape(shape + (cols.size,)), mask,   # invalid: failed there
                                       None if sig is None else sig_t.reshape(shape),   # no map: its own σ
                                       scale_var=scale_var.reshape(shape))
        vascular = self._vascular_fit(v_out, shape, in_mask, valid, todo.size)
        return JointFit(tissue, vascular, vasc_sig.reshape(shape + (m,)), model=self, data=data, sigma=sigma)

    def predict(self, params, protocol=None) -> np.ndarray:
        """Noise-free (1 - fV)·S_tissue + fV·a·S_flow [V, M] at params [V, P] (``names`` order: the tissue's,
        then fV and the flow's; a the relaxation weights), each dictionary's entry nearest to its parameters."""
        from .posterior import nearest_entry_signals
        self._own_measurements(protocol, self.flow.protocol)
        params = np.atleast_2d(np.asarray(params, float))
        n_t = len(self.tissue_model.names)
        tissue = nearest_entry_signals(self.tissue_params, self.tissue_signals, params[:, :n_t],
                                       self.tissue_model.free)
        flow_cols = [self.names.index(n) for n in self.flow.names]
        flow = nearest_entry_signals(self.flow.params, self.flow_signals, params[:, flow_cols],
                                     self.flow_free) if len(self.flow_free) else np.repeat(self.flow_signals[:1], len(params), 0)
        fv = params[:, n_t, None]
        return (1 - fv) * tissue + fv * self.te_weight[None, :] * flow

    def fitted_signal(self, data, params=None, sigma=None) -> np.ndarray:
        """The fitted signal [V, M] of voxels data [V, M] (σ [V] or None: the tissue-only residual's) under the
        last fit's fV prior: its vascular posterior's mean compartment plus the tissue one."""
        y = np.atleast_2d(np.asarray(data, float))
        sig = (self._residual_sigma(y, np.arange(len(y))) if sigma is None
               else np.asarray(sigma, float).reshape(len(y), -1).mean(1))
        post = self.vascular_posterior(y, sig)
        vascular = post["vascular_signal"]
        return self.tissue_component(y, vascular, post["fv"][:, 0], None if sigma is None else sig) + vascular

    def tissue_component(self, y, vascular_signal, fv, sigma=None) -> np.ndarray:
        """(1 - fV)·E[S_tissue] [V, M] on every measurement for voxels y [V, M]: the tissue posterior's
        entry weights (from the devascularised data on its measurements) applied to the full signals."""
        y_t = (y - vascular_signal) / (1 - fv)[:, None]
        sig = None if sigma is None else np.asarray(sigma, float) / (1 - fv)
        floor = (np.zeros(len(y)) if sig is None or self.noise == "gaussian"
                 else noise_floor(sig, self.n_averages))
        cost = self.tissue_model._entry_costs(np.ascontiguousarray(y_t[:, self.tissue_columns]), floor)
        var = np.maximum(cost.min(1) / self.tissue_columns.size, 1e-12) if sig is None else sig ** 2
        if self.tissue_model.prior == "design":
            cost -= (2 * var)[:, None] * self.tissue_model.log_prior[None, :]
        best = cost.min(1)
        w = np.exp(-(cost - best[:, None]) / (2 * var[:, None]))
        return (1 - fv)[:, None] * ((w / w.sum(1, keepdims=True)) @ self.tissue_signals)

    def _vascular_chunk(self, y, sigma, idx, v_out, vasc_sig, y_t, sig_t, scale_var) -> None:
        post = self.vascular_posterior(y, sigma)
        for key, arr in zip(("params", "sd", "lo", "hi", "contraction"), self.flow_summaries(post["w_flow"])):
            v_out[key][idx, :-1] = arr
        for key, arr in zip(("params", "sd", "lo", "hi", "contraction"), self.fv_summaries(post["fv"])):
            v_out[key][idx, -1] = arr
        v_out["p_none"][idx] = post["fv"][:, 2]
        v_out["log_bf"][idx] = post["fv"][:, 3]
        # the tissue step: the vascular component's mean given a vascular signal is removed, weighted by
        # P(vascular | data) at the tissue step's odds (TISSUE_REMOVAL_P_ZERO; continuous, no threshold), and the
        # uncertainty of 1/(1 - a fV) is marginalised as a common scale
        slab = np.maximum(1 - post["fv"][:, 2], 1e-300)
        w = self.removal_weight(post["fv"][:, 3])
        m1 = np.clip(post["fv"][:, 0] / slab, 0.0, self.fv_max)          # E[fV] given a vascular signal
        m2 = np.clip(post["fv"][:, 1] / slab, m1 ** 2, self.fv_max ** 2)  # E[fV²] given a vascular signal
        ef = w * m1
        share = 1 - ef[:, None] * self.te_weight[None, :]      # the tissue's share of each measurement
        a_t = self.te_weight[self.tissue_columns]
        scale_var[idx] = (np.maximum(w * m2 - ef ** 2, 0.0)[:, None]
                          * a_t ** 2 / share[:, self.tissue_columns] ** 2).mean(1)
        removed = (w / slab)[:, None] * post["vascular_signal"]
        vasc_sig[idx] = post["vascular_signal"]
        y_t[idx] = (y - removed) / share
        sig_t[idx] = sigma / share[:, self.tissue_columns].mean(1) if np.all(np.isfinite(sig_t[idx])) else np.nan

    @staticmethod
    def removal_weight(log_bf: np.ndarray, p_zero: float | None = None) -> np.ndarray:
        """P(vascular | data) [V] at the tissue step's prior odds (TISSUE_REMOVAL_P_ZERO) from the log Bayes
        factors [V] of a vascular signal (kernels.joint_pair_moments)."""
        pc = TISSUE_REMOVAL_P_ZERO if p_zero is None else p_zero
        if pc <= 0:
            return np.ones(len(log_bf))
        return 1.0 / (1.0 + np.exp(np.clip(np.log(pc / (1 - pc)) - np.asarray(log_bf, float), -700.0, 700.0)))

    def _residual_sigma(self, flat, todo) -> np.ndarray:
        """σ per voxel without a noise map: the RMS residual of the best tissue-only entry (an upper bound)."""
        out = np.full(flat.shape[0], np.nan)
        for c0 in range(0, todo.size, self.chunk_size):
            idx = todo[c0:c0 + self.chunk_size]
            cols = self.tissue_columns
            cost = self.tissue_model._entry_costs(flat[idx][:, cols], np.zeros(idx.size))
            out[idx] = np.sqrt(np.maximum(cost.min(1) / cols.size, 1e-8))
        return out

    def _empty_vascular(self, n_vox, in_mask) -> dict:
        p = len(self.flow.names) + 1
        out = {k: np.full((n_vox, p), np.nan) for k in ("params", "sd", "lo", "hi", "contraction")}
        out["p_none"] = np.full(n_vox, np.nan)
        out["log_bf"] = np.full(n_vox, np.nan)
        for arr in out.values():
            arr[~in_mask] = 0
        return out

    def _vascular_fit(self, v_out, shape, in_mask, valid, n_fitted) -> DictionaryFit:
        names = list(self.flow.names) + ["fV"]
        exitcode = np.where(valid, EXIT_OK, np.where(in_mask, EXIT_FAILED, EXIT_BACKGROUND)).astype(np.int8)
        nan = np.where(in_mask, np.nan, 0.0).reshape(shape)
        free = [names[j] for j in self.flow_free] + ["fV"]
        fit = DictionaryFit({n: v_out["params"][:, j].reshape(shape) for j, n in enumerate(names)},
                            {n: v_out["sd"][:, names.index(n)].reshape(shape) for n in free},
                            exitcode.reshape(shape), nan, nan, nan, nan, names,
                            {**dict(self.flow.units), "fV": ""},
                            {"n_fitted": int(n_fitted), "estimator": "joint", "vascular_prior": self.prior.to_dict()})
        fit.ci95lo = {n: v_out["lo"][:, names.index(n)].reshape(shape) for n in free}
        fit.ci95hi = {n: v_out["hi"][:, names.index(n)].reshape(shape) for n in free}
        fit.contraction = {n: v_out["contraction"][:, names.index(n)].reshape(shape) for n in free}
        #: P(vascular signal | data) [...] under the session's prior (the flow maps are conditional on it)
        fit.p_vascular = np.where(in_mask, 1 - v_out["p_none"], 0.0).reshape(shape)
        from .posterior import identifiability_summary
        ok = exitcode.ravel() == EXIT_OK
        fit.info["identifiability"] = identifiability_summary(
            np.stack([v_out["contraction"][ok, names.index(n)] for n in free], 1), free)
        return fit

    def describe(self) -> Description:
        tissue = self.tissue_model.describe()
        params = dict(tissue.parameters)
        params.update({"FitMethod": "joint tissue + vascular posterior on every measurement: "
                                    "(1 - fV) S_tissue + fV S_flow, fV marginalised analytically over "
                                    + self.prior.sentence() + "; tissue posterior on "
                                    f"b >= {self.tissue_b_min:g} s/mm² of the data with the vascular component's "
                                    "posterior mean removed (no threshold) and the uncertainty of its (1 - fV) "
                                    "scale marginalised",
                       "FittedB": b_range(self.flow.protocol.b), "TissueFittedB": b_range(self.tissue_model.dictionary.protocol.b),
                       "JointModel": {"FvMax": self.fv_max, "TissueCandidates": self.n_candidates,
                                      "FlowPrototypesForCandidates": int(len(self.prototypes)),
                                      "T2TissueMs": self.t2[0], "T2BloodMs": self.t2[1],
                                      "FlowEntries": len(self.flow_signals)},
                       "VascularPrior": self.prior.to_dict()})
        lo, hi = b_range(self.flow.protocol.b)
        return Description(method=f"jointly with the vascular signal on every measurement with b > 0 (b {lo:g}-{hi:g} "
                                  f"s/mm²; the tissue posterior on b >= {self.tissue_b_min:g} s/mm² after the vascular "
                                  "component's posterior mean is removed), " + tissue.method,
                           parameters=params, references=list(tissue.references))

    def describe_vascular(self) -> Description:
        """The vascular maps' description (vm, vs, anb, fV): the joint fit's vascular part, not its tissue priors."""
        desc = self.describe()
        lo, hi = b_range(self.flow.protocol.b)
        params = {k: v for k, v in desc.parameters.items() if k not in ("Prior", "PointPrior", "TissueFittedB")}
        params["FitMethod"] = ("vascular part of the joint tissue + vascular posterior, (1 - fV) S_tissue + fV S_flow on "
                               f"every measurement (b {lo:g}-{hi:g} s/mm²): every pair of the voxel's "
                               f"{self.n_candidates} most likely tissue entries and the flow dictionary's "
                               f"{len(self.flow_signals)} entries, fV marginalised analytically over "
                               + self.prior.sentence() + "; vm, vs, anb: posterior means (given a vascular signal) "
                               "with SDs and 95 % intervals")
        params["Uncertainty"] = ("desc-sd: posterior SD; desc-ci95lo/desc-ci95hi: 95 % credible interval; "
                                 "desc-contraction: posterior contraction; vm, vs, anb conditional on a vascular "
                                 "signal being present")
        return Description(method=f"as the vascular part of a joint tissue + vascular posterior on every measurement "
                                  f"(b {lo:g}-{hi:g} s/mm²), fV under " + self.prior.sentence()
                                  + ", vm, vs and anb as posterior means given a vascular signal",
                           parameters=params, references=[])
