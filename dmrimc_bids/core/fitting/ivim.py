"""IVIM of a protocol's low-b data: the Bayesian grid posterior (default, ivim_posterior.py) or the segmented fit.

Estimators (``IvimModel(estimator=)``): 'bayes' (posterior of f, D, D* with S0 free, OSIPI default bounds;
ivim_posterior.py) and 'segmented'. The b = 0 signal is b ≈ 0 as acquired: low b (5-200 s/mm²) are IVIM
data, never b0. The segmented estimator (the common OSIPI "segmented" pattern, statement of what is computed):
1. tissue: D and intercept A by least squares of S(b) = A e^{-bD} on b >= b_split (default 200 s/mm², or the
   acquired b nearest to it, choose_b_split),
   started from a weighted log-linear fit (weights S², Veraart et al. 2013) and refined on the exact
   least-squares profile in D (A closed form);
2. the tissue signal is extrapolated to low b, S_T = A e^{-bD}; the vascular signal is S_V = S - S_T;
3. S_V on b <= b_split (b = 0 included) is fitted by F e^{-bD*} (least squares, F closed form, D*
   bounded: exhaustive log-grid search then golden-section refinement);
4. fV = F / (F + A), i.e. the vascular share of the fitted signal at b = 0 (using every low b, not only
   the b = 0 volumes, for the amplitude); S0 = F + A.
Noise-free, the estimator is biased when D* is small enough that the vascular signal has not decayed by
b_split (e.g. D* = 10 µm²/ms); tests compare with its own noise-free limit (the OSIPI IVIM code collection, TF2.4).
Units: b in s/mm², D and D* in µm²/ms (= 1e-3 mm²/s); fV dimensionless.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..protocol import B0_THRESHOLD
from ..units import IVIM_UNITS
from .model import EXIT_BACKGROUND, EXIT_FAILED, EXIT_OK, Description, Fit, Model, b_range

#: Default b split between the vascular and tissue regimes [s/mm²].
B_SPLIT = 200.0
#: Default bounds: D [0, 5] µm²/ms, D* [3, 100] µm²/ms (OSIPI OJ_GU_seg: D* 0.003-0.1 mm²/s).
D_BOUNDS = (0.0, 5.0)
DSTAR_BOUNDS = (3.0, 100.0)
#: The IVIM estimators: the grid posterior (default, chosen by benchmarks/ivim_peers.py) and the segmented fit.
IVIM_ESTIMATORS = ("bayes", "segmented")
_GOLD = (np.sqrt(5.0) - 1.0) / 2.0


@dataclass
class IvimEstimates:
    """Per-voxel results [V]: D and Dstar [µm²/ms], fV, S0 and the tissue intercept A (signal units)."""

    D: np.ndarray
    fV: np.ndarray
    Dstar: np.ndarray
    S0: np.ndarray
    A: np.ndarray

    def tissue_signal(self, b) -> np.ndarray:
        """S_T(b) = A e^{-bD} [V, M]."""
        return self.A[:, None] * np.exp(-np.asarray(b, float)[None, :] * 1e-3 * self.D[:, None])

    def vascular_signal(self, signals, b) -> np.ndarray:
        """S_V / S_V(0) [V, M]: the vascular signal normalised by fV·S0 (NaN where fV = 0)."""
        sv0 = self.fV * self.S0
        with np.errstate(invalid="ignore", divide="ignore"):
            return (np.asarray(signals, float) - self.tissue_signal(b)) / np.where(sv0 > 0, sv0, np.nan)[:, None]


def _wls_line(x, y, w):
    """Weighted least-squares line y ≈ c0 + c1 x per voxel (rows), x [M], y and w [V, M]."""
    sw = w.sum(1)
    mx = (w * x).sum(1) / sw
    my = (w * y).sum(1) / sw
    dx = x[None, :] - mx[:, None]
    c1 = (w * dx * (y - my[:, None])).sum(1) / np.maximum((w * dx * dx).sum(1), 1e-300)
    return my - c1 * mx, c1


def _mono_cost(y, x, rate):
    """Least-squares cost and optimal amplitude of y [V, M] ≈ a e^{-x·rate} for rates [V, K]."""
    e = np.exp(-x[None, None, :] * rate[:, :, None])
    a = np.einsum("vm,vkm->vk", y, e) / np.maximum(np.einsum("vkm,vkm->vk", e, e), 1e-300)
    return np.sum((y[:, None, :] - a[:, :, None] * e) ** 2, axis=2), a


def _golden(fun, lo, up, n=32):
    """Vectorised golden-section minimisation of fun([V, 2]) -> [V, 2] on brackets [lo, up]."""
    for _ in range(n):
        c = up - _GOLD * (up - lo)
        d = lo + _GOLD * (up - lo)
        fc, fd = fun(np.stack([c, d], 1)).T
        left = fc < fd
        up = np.where(left, d, up)
        lo = np.where(left, lo, c)
    return 0.5 * (lo + up)


def _profile_min(fun, start, bounds, n=24):
    """Refine a start value per voxel: grid of ±60 % around it, then golden section."""
    grid = np.clip(start[:, None] * np.linspace(0.4, 1.6, n)[None, :], *bounds)
    grid[:, 0] = np.maximum(grid[:, 0], bounds[0])
    k = np.argmin(fun(grid), axis=1)
    rows = np.arange(len(start))
    return _golden(fun, grid[rows, np.maximum(k - 1, 0)], grid[rows, np.minimum(k + 1, n - 1)])


def fit_segmented_ivim(signals, b_values, b_split=B_SPLIT, b0_threshold=1e-6, d_bounds=D_BOUNDS,
                       dstar_bounds=DSTAR_BOUNDS, n_iter=3) -> IvimEstimates:
    """Segmented IVIM of signals [V, M] at b [M] (s/mm²); needs >= 2 distinct b >= b_split and a b = 0
    (b <= b0_threshold). Voxels with a non-positive or non-finite b = 0 signal give NaN."""
    S = np.atleast_2d(np.asarray(signals, float))
    b = np.asarray(b_values, float)
    hi = b >= b_split
    zero = b <= b0_threshold
    if np.unique(b[hi]).size < 2 or not zero.any():
        raise ValueError(f"segmented IVIM needs a b = 0 and two distinct b >= {b_split:g} s/mm²")
    s0 = S[:, zero].mean(1)
    ok = np.isfinite(s0) & (s0 > 0) & np.all(np.isfinite(S), axis=1)
    s0s = np.where(ok, s0, 1.0)
    Sn = np.where(ok[:, None], S, 1.0) / s0s[:, None]
    bh = b[hi] * 1e-3
    y = np.log(np.maximum(Sn[:, hi], 1e-6))
    w = np.ones_like(y)
    for _ in range(n_iter + 1):  # weighted log-linear start
        c0, c1 = _wls_line(-bh, y, w)
        w = np.exp(2.0 * (c0[:, None] - c1[:, None] * bh[None, :]))
    D = _profile_min(lambda d: _mono_cost(Sn[:, hi], bh, d)[0], np.clip(c1, *d_bounds), d_bounds)
    A = _mono_cost(Sn[:, hi], bh, D[:, None])[1][:, 0]
    low = b < b_split
    bb = b[low] * 1e-3
    sv = Sn[:, low] - A[:, None] * np.exp(-bb[None, :] * D[:, None])
    grid = np.geomspace(*dstar_bounds, 64)
    costs = np.concatenate([_mono_cost(sv, bb, np.broadcast_to(g, (len(S), g.size)))[0]
                            for g in np.array_split(grid, 8)], axis=1)
    k = np.argmin(costs, axis=1)
    dstar = _golden(lambda ds: _mono_cost(sv, bb, ds)[0], grid[np.maximum(k - 1, 0)],
                    grid[np.minimum(k + 1, grid.size - 1)])
    F = np.maximum(_mono_cost(sv, bb, dstar[:, None])[1][:, 0], 0.0)
    fV = np.clip(F / np.maximum(F + A, 1e-12), 0.0, 1.0)
    nan = np.where(ok, 1.0, np.nan)
    return IvimEstimates(D * nan, fV * nan, dstar * nan, (A + F) * s0s * nan, A * s0s * nan)


#: Default largest b of the IVIM fit [s/mm²]: the extended IVIM b-sets reach 1200; above, tissue signals
#: depart from mono-exponential decay (kurtosis) and would pass for a second compartment.
B_MAX = 1200.0


def choose_b_split(b_values, target: float = B_SPLIT, b_max: float = np.inf) -> float:
    """The split from the acquired b-values [s/mm²]: the acquired b nearest to ``target`` that leaves two
    distinct b in [split, b_max] and a b below it (OSIPI convention: D from b >= split)."""
    b = np.unique(np.asarray(b_values, float))
    b = b[(b > 0) & (b <= b_max)]
    ok = [v for v in b if (b >= v).sum() >= 2 and (b < v).any()]
    if not ok:
        return float(target)
    return float(min(ok, key=lambda v: (abs(np.log(v / target)), v)))


@dataclass
class IvimGroups:
    """Segmented IVIM of a whole protocol. maps: fV, D, Dstar, S0 of the reference group [V];
    vascular: S_V/S_V(0) of every low-b measurement of every usable group [V, Mv]; vascular_index: those
    measurements' indices in the protocol; vascular_scale: fV·S0 of their group [V, Mv] (divide a σ by it);
    notes: which groups were used and why others were not."""

    maps: dict
    vascular: np.ndarray
    vascular_index: np.ndarray
    vascular_scale: np.ndarray
    reference_group: dict
    notes: list


def ivim_groups(protocol, b_split=B_SPLIT, b_max=B_MAX, b0_threshold=B0_THRESHOLD):
    """Per TE (and series) group: (TE [ms], indices) of the groups usable for IVIM (a b = 0, a b in
    (b0_threshold, b_split) and two distinct b in [b_split, b_max]; b_split as choose_b_split picks it
    from the group's b), and notes on the others."""
    te = np.where(np.isfinite(protocol.echo_time_ms), np.round(protocol.echo_time_ms, 3), -1.0)
    keys = sorted(set(zip(protocol.series.tolist(), te.tolist())), key=lambda k: (k[1], k[0]))
    usable, notes = [], []
    for series, t in keys:
        idx = np.flatnonzero((protocol.series == series) & (te == t))
        b = protocol.b[idx]
        split = choose_b_split(b[b > b0_threshold], b_split, b_max)
        ok = ((b <= b0_threshold).any() and ((b > b0_threshold) & (b < split)).any()
              and np.unique(b[(b >= split) & (b <= b_max)]).size >= 2)
        label = f"series {series}, TE {t:g} ms" if t >= 0 else f"series {series}, TE unknown"
        if ok:
            usable.append((t, idx))
        else:
            notes.append(f"IVIM: {label} not used: needs a b=0, a b in ({b0_threshold:g}, {b_split:g}) and two "
                         f"distinct b in [{b_split:g}, {b_max:g}] s/mm²")
    return usable, notes


def _fit_group(S, b, b_split, estimator, sigma=None) -> tuple:
    """(maps, tissue intercept A [V]) of one group: S [V, M] at b [M] (b = 0 exactly for the b0 volumes)."""
    if estimator == "segmented":
        fit = fit_segmented_ivim(S, b, b_split=b_split)
        return {"fV": fit.fV, "D": fit.D, "Dstar": fit.Dstar, "S0": fit.S0}, fit.A
    from .ivim_posterior import posterior_ivim
    maps = posterior_ivim(S, b, sigma=sigma)
    return maps, maps["S0"] * (1.0 - maps["fV"])


def fit_ivim_protocol(signals, protocol, b_split=B_SPLIT, b_max=B_MAX, b0_threshold=B0_THRESHOLD,
                      estimator: str = "bayes", sigma=None) -> IvimGroups:
    """IVIM of every usable TE group of signals [V, M] (directionally averaged, any scaling); sigma: the
    noise σ [V, M] in the signals' units, or None.

    The maps come from the shortest-TE usable group (closest to the vascular volume fraction: blood's
    longer T2 inflates the apparent fV at longer TE); the vascular signals of all usable groups, each
    normalised by its own fV·S0, feed the flow-dictionary fit (their (δ, Δ) carry the flow information).
    Each group's split is choose_b_split of its b-values; measurements above b_max are not used.
    """
    if estimator not in IVIM_ESTIMATORS:
        raise ValueError(f"IVIM estimator {estimator!r} is not one of {IVIM_ESTIMATORS}")
    S = np.atleast_2d(np.asarray(signals, float))
    usable, notes = ivim_groups(protocol, b_split, b_max, b0_threshold)
    if not usable:
        raise ValueError("no TE group has the b-values IVIM needs")
    maps, vas, vidx, vscale, ref = None, [], [], [], None
    for te, idx in usable:
        sub = idx[protocol.b[idx] <= b_max]
        b = np.where(protocol.b[sub] <= b0_threshold, 0.0, protocol.b[sub])
        split = choose_b_split(b[b > 0], b_split, b_max)
        sig = None if sigma is None else np.nanmean(np.atleast_2d(sigma)[:, sub], axis=1)
        group_maps, A = _fit_group(S[:, sub], b, split, estimator, sig)
        low = sub[(b > 0) & (b <= split)]
        sv0 = group_maps["fV"] * group_maps["S0"]
        tissue = A[:, None] * np.exp(-protocol.b[low][None, :] * 1e-3 * group_maps["D"][:, None])
        with np.errstate(invalid="ignore", divide="ignore"):
            vas.append((S[:, low] - tissue) / np.where(sv0 > 0, sv0, np.nan)[:, None])
        vidx.append(low)
        vscale.append(np.repeat(sv0[:, None], low.size, axis=1))
        if maps is None:
            maps = group_maps
            ref = {"EchoTime_ms": te if te >= 0 else None, "Measurements": int(sub.size), "BSplit": split}
    if len(usable) > 1:
        notes.append(f"IVIM maps from the shortest-TE group ({ref['EchoTime_ms']} ms); vascular signals of "
                     f"{len(usable)} groups fitted together")
    return IvimGroups(maps, np.concatenate(vas, 1), np.concatenate(vidx), np.concatenate(vscale, 1), ref, notes)


@dataclass
class VascularSignal:
    """What segmented IVIM hands to the flow-dictionary fit. signal: S_V/S_V(0) [..., Mv] of the low-b
    measurements (NaN outside the mask); sigma: its σ (the normalised σ divided by fV·S0) or None; mask:
    the voxels where it is meaningful (fitted, fV >= min_fv, finite) and those whose IVIM fit failed (NaN
    signal, so that the flow fit marks them failed); index: the measurements' indices in
    the fitted protocol; reason: why no voxel qualifies ("" when some do)."""

    signal: np.ndarray
    sigma: np.ndarray | None
    mask: np.ndarray
    index: np.ndarray
    reason: str = ""


@dataclass
class IvimMapFit(Fit):
    """IVIM maps fV, D, Dstar [µm²/ms], S0 in the data's spatial shape (NaN outside the mask), their SDs,
    95 % intervals and contraction (Bayesian estimator), the vascular signal for the flow fit, and notes
    on the TE groups used."""

    params: dict
    exitcode: np.ndarray
    flow_signal: VascularSignal
    notes: list
    reference_group: dict
    names: list = field(default_factory=lambda: list(IVIM_NAMES))
    units: dict = field(default_factory=lambda: dict(IVIM_UNITS))
    sd: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    intervals: dict = field(default_factory=dict)

    def diagnostics(self) -> dict:
        """The exit code map (1 fitted, -1 failed: NaN or non-positive data; 0 outside the mask)."""
        return {"exitcode": self.exitcode}

    def uncertainty_maps(self) -> dict:
        """'<name>_ci95lo', '<name>_ci95hi', '<name>_contraction' of fV, D and Dstar (Bayesian estimator)."""
        return dict(self.intervals)

    def residual(self) -> np.ndarray:
        """Mean squared misfit of the bi-exponential over the measurements with b <= b_max."""
        ok = self.exitcode == EXIT_OK
        out = np.full(self.exitcode.shape, np.nan)
        if ok.any():
            sel = np.nonzero(ok)
            use = self.model.protocol.b <= self.model.b_max
            out[sel] = np.mean((self.data[sel][:, use] - self.predict(sel)[:, use]) ** 2, axis=1)
        return out


#: The IVIM maps and their units.
IVIM_NAMES = ("fV", "D", "Dstar", "S0")
#: Voxels with a smaller vascular signal fraction get no flow-dictionary fit.
MIN_FV = 0.005
_UNCERTAINTY = ("_ci95lo", "_ci95hi", "_contraction")


class IvimModel(Model):
    """IVIM of a whole protocol (fit_ivim_protocol) as a Model. protocol: the directionally averaged shells
    the data are on; method: the estimator, 'bayes' (default) or 'segmented'; b_split, b_max, b0_threshold [s/mm²];
    min_fv: smallest fV whose vascular signal goes on to the flow fit."""

    names = list(IVIM_NAMES)

    def __init__(self, protocol, b_split: float = B_SPLIT, b_max: float = B_MAX, b0_threshold: float = B0_THRESHOLD,
                 min_fv: float = MIN_FV, method: str = "bayes"):
        if method not in IVIM_ESTIMATORS:
            raise ValueError(f"IVIM estimator {method!r} is not one of {IVIM_ESTIMATORS}")
        self.protocol, self.b_split, self.b_max = protocol, float(b_split), float(b_max)
        self.b0_threshold, self.min_fv, self.method = float(b0_threshold), float(min_fv), method
        self.noise_map_used = None   # set by fit: whether a noise map gave σ

    def jit_kernels(self) -> list:
        if self.method != "bayes":
            return []
        from . import ivim_posterior as ip
        return [ip._posterior_kernel]   # its callees are compiled into it (and cached with it)

    def fit(self, data, mask=None, sigma=None, progress=None) -> IvimMapFit:
        """data [..., M] b0-normalised signal of every shell; sigma [..., M] or None."""
        shape = data.shape[:-1]
        mask = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
        sig = None if sigma is None else np.broadcast_to(np.asarray(sigma, float).reshape(shape + (-1,)),
                                                         data.shape)
        self.noise_map_used = sig is not None
        res = fit_ivim_protocol(data[mask], self.protocol, self.b_split, self.b_max, self.b0_threshold,
                                self.method, None if sig is None else sig[mask])

        def full(values):
            out = np.full(shape, np.nan)
            out[mask] = values
            return out

        params = {name: full(res.maps[name]) for name in IVIM_NAMES}
        sd = {name: full(res.maps[name + "_sd"]) for name in IVIM_NAMES if name + "_sd" in res.maps}
        intervals = {name + k: full(res.maps[name + k]) for name in IVIM_NAMES for k in _UNCERTAINTY
                     if name + k in res.maps}
        signal = np.full(shape + (res.vascular.shape[1],), np.nan)
        signal[mask] = res.vascular
        vsigma = None
        if sig is not None:
            vsigma = np.full(signal.shape, np.nan)
            with np.errstate(invalid="ignore", divide="ignore"):
                vsigma[mask] = sig[mask][:, res.vascular_index] / res.vascular_scale
        vmask = np.zeros(shape, bool)
        vmask[mask] = (res.maps["fV"] >= self.min_fv) & np.all(np.isfinite(res.vascular), axis=1)
        reason = "" if vmask.any() else f"no voxel has fV >= {self.min_fv:g}: no flow maps were written"
        finite = np.isfinite(params["fV"])
        n_vascular = int(vmask.sum())
        # voxels whose IVIM fit failed (NaN or non-positive data) stay in the signal's mask with a NaN signal,
        # so the flow fit marks them failed (-1) too instead of "no vascular signal"
        vmask |= mask & ~finite
        exitcode = np.where(mask, np.where(finite, EXIT_OK, EXIT_FAILED), EXIT_BACKGROUND).astype(np.int8)
        if progress is not None:
            progress(int(mask.sum()))
        info = {"n_fitted": int(finite.sum()), "n_vascular": n_vascular, "estimator": self.method}
        if intervals:
            from .posterior import identifiability_summary
            con = np.stack([intervals[f"{n}_contraction"][mask] for n in ("fV", "D", "Dstar")], axis=1)
            info["identifiability"] = identifiability_summary(con, ["fV", "D", "Dstar"])
        fit = IvimMapFit(params, exitcode, VascularSignal(signal, vsigma, vmask, res.vascular_index, reason),
                         list(res.notes) + ([reason] if reason else []), res.reference_group, sd=sd,
                         info=info, intervals=intervals, model=self, data=data, sigma=sigma)
        return fit

    def predict(self, params, protocol=None) -> np.ndarray:
        """Bi-exponential S0·((1 - fV) e^{-bD} + fV e^{-bD*}) [V, M] at every measurement of protocol
        (default: the model's); params [V, 4] in IVIM_NAMES order (D, D* in µm²/ms)."""
        protocol = self.protocol if protocol is None else protocol
        fv, d, dstar, s0 = (np.atleast_2d(np.asarray(params, float))[:, j, None] for j in range(4))
        b = np.where(protocol.b <= self.b0_threshold, 0.0, protocol.b)[None, :] * 1e-3
        return s0 * ((1 - fv) * np.exp(-b * d) + fv * np.exp(-b * dstar))

    def fitted_signal(self, data, params, sigma=None) -> np.ndarray:
        """predict(params): the bi-exponential at the estimates (data and σ are not needed)."""
        return self.predict(params)

    def describe(self) -> Description:
        b = self.protocol.b
        common = {"BSplit": self.b_split, "BMax": self.b_max, "B0Threshold": self.b0_threshold,
                  "IvimEstimator": self.method, "FittedB": b_range(b[(b > self.b0_threshold) & (b <= self.b_max)])}
        if self.method == "bayes":
            from .ivim_posterior import D_BOUNDS as DB, DSTAR_BOUNDS as SB
            sigma_text = {True: "sigma from the noise map", False: "sigma integrated out (no noise map)",
                          None: "sigma from the noise map where one is given, else integrated out"}[self.noise_map_used]
            return Description(
                method=f"by Bayesian IVIM: the posterior of (fV, D, D*) on a grid (D {DB[0]:g}-{DB[1]:g}, D* "
                       f"{SB[0]:g}-{SB[1]:g} µm²/ms, prior flat in D and in sqrt(D*)), the two compartments' "
                       f"amplitudes (S0 free) by non-negative least squares at every node, on b ≤ {self.b_max:g} "
                       "s/mm²; posterior means with SDs, 95 % intervals and contraction",
                parameters={"FitMethod": "Bayesian IVIM: grid posterior over (D, D*) with the amplitudes projected "
                                         "out (variable projection); " + sigma_text,
                            "Uncertainty": "desc-sd: posterior SD; desc-ci95lo/desc-ci95hi: 95 % credible interval; "
                                           "desc-contraction: posterior contraction",
                            **common},
                references=["ivim"])
        return Description(
            method=f"by segmented IVIM: the tissue ADC and intercept from {self.b_split:g} ≤ b ≤ {self.b_max:g} "
                   "s/mm², the tissue signal extrapolated to low b and the vascular signal S_V = S - S_T fitted by "
                   "a mono-exponential",
            parameters={"FitMethod": "segmented IVIM: D and intercept by least squares on b_split <= b <= b_max; "
                                     "tissue signal extrapolated; S_V = S - S_T fitted by F exp(-b D*) on b < b_split; "
                                     "fV = F/(F + intercept)",
                        **common},
            references=["ivim"])
