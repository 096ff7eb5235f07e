"""Signal preparation: directional averaging, b0 normalisation, vascular-threshold filter.

Data arrays have the measurement axis last ([..., N]); b in s/mm², times in ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .protocol import B0_THRESHOLD, Protocol

#: b-values within this distance [s/mm²] are one shell (scanners round nominal b differently).
DEFAULT_SHELL_TOLERANCE = 20.0
#: At low b a shell is narrower: b within this fraction of b (+1 s/mm²) when that is below the tolerance,
#: so that the IVIM b-values 10, 20, 30 stay distinct shells while 995/1000/1005 stay one.
LOW_B_RELATIVE_TOLERANCE = 0.1
#: Gradient timings within this distance [ms] are the same timing.
TIMING_TOLERANCE_MS = 0.05


def _timing_key(p: Protocol, i: int, b0: bool):
    te = p.echo_time_ms[i]
    te_key = None if not np.isfinite(te) else round(te / TIMING_TOLERANCE_MS)
    sd, bd = p.small_delta_ms[i], p.big_delta_ms[i]
    timing = None if (b0 and not (np.isfinite(sd) and sd > 0 and np.isfinite(bd) and bd > 0)) else (
        round(sd / TIMING_TOLERANCE_MS), round(bd / TIMING_TOLERANCE_MS))
    return int(p.series[i]), te_key, timing


def shell_assignment(protocol: Protocol, b0_threshold: float = B0_THRESHOLD,
                     shell_tolerance: float = DEFAULT_SHELL_TOLERANCE):
    """Group volumes into shells of equal (series, TE, δ, Δ) and b within ``shell_tolerance`` (at low b
    within LOW_B_RELATIVE_TOLERANCE·b + 1 s/mm² when that is smaller).

    Returns (shells, index): ``shells`` is a Protocol with one measurement per shell (b the mean
    of its volumes, ``n_averaged`` their number, b=0 shells with b set to 0), ``index[i]`` the shell
    of volume i. Shell order follows first appearance in the acquisition.
    """
    n = len(protocol)
    is_b0 = protocol.b <= b0_threshold
    groups: dict = {}
    for i in range(n):
        key = _timing_key(protocol, i, bool(is_b0[i])) + (bool(is_b0[i]),)
        groups.setdefault(key, []).append(i)
    index = np.full(n, -1)
    members: list[list[int]] = []
    for key, vols in groups.items():
        vols = np.array(vols)
        if key[-1]:  # b0 volumes of one timing: one shell
            clusters = [vols]
        else:        # split by b: sort and cut where the gap exceeds the tolerance
            order = vols[np.argsort(protocol.b[vols], kind="stable")]
            bs = protocol.b[order]
            cuts = np.flatnonzero(np.diff(bs) > np.minimum(shell_tolerance, LOW_B_RELATIVE_TOLERANCE * bs[1:] + 1.0)) + 1
            clusters = np.split(order, cuts)
        for c in clusters:
            members.append(sorted(c.tolist()))
    members.sort(key=lambda m: m[0])
    for s, m in enumerate(members):
        index[m] = s
    first = np.array([m[0] for m in members])
    shells = protocol.subset(first)
    shells.b = np.array([0.0 if is_b0[m[0]] else protocol.b[m].mean() for m in members])
    shells.n_averaged = np.array([protocol.n_averaged[m].sum() for m in members])
    shells.bvecs = np.zeros((len(members), 3))
    return shells, index


def spherical_mean(data: np.ndarray, protocol: Protocol, b0_threshold: float = B0_THRESHOLD,
                   shell_tolerance: float = DEFAULT_SHELL_TOLERANCE):
    """Arithmetic mean over directions within each (b, δ, Δ, TE) shell.

    data: [..., N] signals. Returns (averaged [..., S], shells Protocol, index [N] volume -> shell).
    """
    if data.shape[-1] != len(protocol):
        raise ValueError(f"{data.shape[-1]} volumes for a protocol of {len(protocol)} measurements")
    shells, index = shell_assignment(protocol, b0_threshold, shell_tolerance)
    out = np.empty(data.shape[:-1] + (len(shells),), dtype=np.float32)
    for s in range(len(shells)):
        out[..., s] = data[..., index == s].mean(axis=-1)
    return out, shells, index


@dataclass
class Normalisation:
    """Which b=0 shells normalise each measurement, and how they were chosen."""

    normaliser: list        # per measurement: list of b0-shell indices
    b0_shells: np.ndarray   # indices of b=0 shells
    notes: list             # human-readable notes (fallbacks used)
    pooled: list = field(default_factory=list)  # per measurement: True when its b=0 shells span series


def normalisation_plan(shells: Protocol, b0_threshold: float = B0_THRESHOLD, source=None,
                       pool_series: bool = True) -> Normalisation:
    """Pick for each measurement the b=0 shells that normalise it.

    pool_series (default): when several series hold b=0 volumes at the measurement's TE, all of them
    are pooled (T2 weighting is the same; normalise_b0 first matches each series' global scale), which
    divides the b=0 noise that every measurement of a series shares by the square root of the number
    of b=0 volumes. Otherwise (and for a TE only one series has): the b=0 shells of its own series, TE
    and (δ, Δ); b=0 shells with no timing (δ or Δ unknown or 0) serve every timing of their series and
    TE; when a group has no b=0 of its own timing, b=0 shells of the same series and TE are used (a note
    says so). No b=0 at that TE in the series is an InputError.
    """
    is_b0 = shells.b <= b0_threshold
    b0_idx = np.flatnonzero(is_b0)
    if b0_idx.size == 0:
        raise InputError(f"no b=0 volume (b <= {b0_threshold:g} s/mm²): the signal cannot be normalised",
                         path=source, fix="include b=0 volumes in the series, or raise --b0-threshold if "
                                          "your b≈0 volumes have a small nominal b")
    keys = [_timing_key(shells, i, bool(is_b0[i])) for i in range(len(shells))]
    normaliser, notes, pooled, pooled_te, borrowed = [], [], [], set(), {}
    for i in range(len(shells)):
        series, te, timing = keys[i]
        same_te = [j for j in b0_idx if keys[j][0] == series and keys[j][1] == te]
        across = [j for j in b0_idx if keys[j][1] == te]
        if is_b0[i]:
            normaliser.append([i])
            pooled.append(False)
            continue
        if pool_series and same_te and len({keys[j][0] for j in across}) > 1:
            normaliser.append(across)
            pooled.append(True)
            pooled_te.add(te)
            continue
        exact = [j for j in same_te if keys[j][2] is None or keys[j][2] == timing]
        pooled.append(False)
        if exact:
            normaliser.append(exact)
        elif same_te:
            normaliser.append(same_te)
            borrowed.setdefault((series, te), []).append(i)
        else:
            te_txt = "unknown TE" if te is None else f"TE={shells.echo_time_ms[i]:g} ms"
            raise InputError(f"no b=0 volume with the same series and {te_txt} as the b={shells.b[i]:g} "
                             f"s/mm² volumes (δ={shells.small_delta_ms[i]:g}, Δ={shells.big_delta_ms[i]:g} ms)",
                             path=source, fix="acquire b=0 volumes with every echo time, or drop these volumes")
    for (series, te), idx in borrowed.items():  # one note per series and TE, not per measurement
        te_txt = "unknown TE" if te is None else f"TE={shells.echo_time_ms[idx[0]]:g} ms"
        timings = sorted({(float(shells.small_delta_ms[i]), float(shells.big_delta_ms[i])) for i in idx})
        notes.append(f"series {series} ({te_txt}): {len(idx)} measurement(s) at (δ, Δ) = "
                     + ", ".join(f"({d:g}, {D:g})" for d, D in timings)
                     + " ms normalised by the b=0 volumes of another timing at the same TE")
    for te in sorted(pooled_te, key=lambda t: -1 if t is None else t):
        n = len({keys[j][0] for j in b0_idx if keys[j][1] == te})
        te_txt = "unknown TE" if te is None else f"TE={te * TIMING_TOLERANCE_MS:g} ms"
        notes.append(f"b=0 volumes of {n} series at {te_txt} pooled for normalisation, each series' global scale "
                     "matched first (median b=0 ratio over the brighter half of the voxels)")
    return Normalisation(normaliser, b0_idx, notes, pooled)


def pooled_b0(data: np.ndarray, shells: Protocol, b0_shells, series: int) -> np.ndarray:
    """The b=0 signal [...] of one series estimated from the b=0 shells of several series.

    Each series' mean b=0 image m_s is divided by its global scale c_s (median of m_s / mean_s m_s over
    the voxels brighter than the median, so background noise does not set it), the scale-free images
    are averaged with the number of volumes as weights, and the result is put back on the scale of
    ``series``. Runs written with different scaling (e.g. per-series rescale slopes) are thereby
    combined correctly; with one voxel it reduces to the series' own b=0."""
    idx = np.asarray(b0_shells, int)
    ser = np.asarray(shells.series)[idx]
    w = shells.n_averaged[idx].astype(float)
    ids = sorted(set(int(v) for v in ser))
    means = {s: np.tensordot(data[..., idx[ser == s]], w[ser == s] / w[ser == s].sum(), axes=([-1], [0]))
             for s in ids}
    ref = np.mean([means[s] for s in ids], axis=0)
    ok = np.isfinite(ref) & (ref > 0)
    for s in ids:
        ok &= np.isfinite(means[s]) & (means[s] > 0)
    bright = ok & (ref >= np.median(ref[ok])) if ok.any() else ok
    scale = {s: float(np.median(means[s][bright] / ref[bright])) if bright.any() else 1.0 for s in ids}
    weight = {s: float(w[ser == s].sum()) for s in ids}
    free = sum(weight[s] * means[s] / scale[s] for s in ids) / sum(weight.values())
    return scale[int(series)] * free


def normalise_b0(data: np.ndarray, shells: Protocol, b0_threshold: float = B0_THRESHOLD,
                 sigma: np.ndarray | None = None, source=None, pool_series: bool = True):
    """Divide each measurement by its b=0 signal: the mean of its group's b=0 shells, or the pooled,
    scale-matched b=0 of several series (see normalisation_plan and pooled_b0).

    data: [..., S] (e.g. spherical means). sigma: optional noise σ map [...] in the same units
    as the data, normalised by the same b=0 signal, so one σ becomes one value per measurement.
    Voxels whose b=0 signal is not finite and positive become NaN (the fit marks them exit -1).
    Returns (normalised [..., S], sigma_normalised [..., S] or None, plan).
    """
    plan = normalisation_plan(shells, b0_threshold, source, pool_series)
    data = np.asarray(data, dtype=np.float64)
    out = np.empty(data.shape, dtype=np.float32)
    sig_out = None if sigma is None else np.empty(data.shape, dtype=np.float32)
    cache: dict = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, norm in enumerate(plan.normaliser):
            pooled = bool(plan.pooled[i])
            key = (tuple(norm), int(shells.series[i]) if pooled else None)
            if key not in cache:
                if pooled:
                    s0 = pooled_b0(data, shells, norm, int(shells.series[i]))
                else:
                    w = shells.n_averaged[norm].astype(float)
                    s0 = np.tensordot(data[..., norm], w / w.sum(), axes=([-1], [0]))
                cache[key] = np.where(np.isfinite(s0) & (s0 > 0), s0, np.nan)
            s0 = cache[key]
            out[..., i] = data[..., i] / s0
            if sig_out is not None:
                sig_out[..., i] = sigma / s0
    return out, sig_out, plan


@dataclass
class FilterResult:
    """Measurements kept for the tissue fit and the ones dropped, with reasons."""

    keep: np.ndarray        # indices into the shells
    dropped: list           # dicts: index, b, small_delta, big_delta, reason

    def warnings(self) -> list[str]:
        """One line per reason, each dropped b listed once (with its number of shells, i.e. diffusion
        times/TEs, when several)."""
        by_reason: dict = {}
        for d in self.dropped:
            if d["b"] == 0:
                continue  # b=0 shells are never fitted; the sidecars list them
            counts = by_reason.setdefault(d["reason"], {})
            counts[f"{d['b']:g}"] = counts.get(f"{d['b']:g}", 0) + 1
        out = []
        for r, counts in by_reason.items():
            listed = ", ".join(b + (f" (x{n})" if n > 1 else "") for b, n in counts.items())
            out.append(f"dropped b = {listed} s/mm²: {r}")
        return out


def vascular_filter(shells: Protocol, vasc_threshold: float = 250.0, max_b: float | None = None,
                    b0_threshold: float = B0_THRESHOLD) -> FilterResult:
    """Keep the measurements the tissue (Histo-μSim) fit uses.

    Drops non-zero b below ``vasc_threshold`` (vascular signal; 250 s/mm² as in the published
    tutorial), b above ``max_b`` (the dictionary's largest b), and the b=0 shells, which after
    normalisation are 1 by construction and carry no information.
    """
    keep, dropped = [], []
    for i, b in enumerate(shells.b):
        reason = None
        if b <= b0_threshold:
            reason = "b=0 shell (used for normalisation only)"
        elif b < vasc_threshold:
            reason = f"below the vascular threshold {vasc_threshold:g} s/mm²"
        elif max_b is not None and b > max_b + 1e-9:
            reason = f"above the dictionary's largest b {max_b:g} s/mm²"
        if reason is None:
            keep.append(i)
        else:
            dropped.append({"index": i, "b": float(b), "small_delta": float(shells.small_delta_ms[i]),
                            "big_delta": float(shells.big_delta_ms[i]), "reason": reason})
    return FilterResult(np.array(keep, dtype=int), dropped)


#: The mask the app builds without one: mean b=0 above this fraction of its 98th percentile (air and the
#: noise floor fall below it; any tissue, however weighted, stays above).
B0_MASK_FRACTION = 0.1


def b0_mask(data: np.ndarray, b: np.ndarray, b0_threshold: float = B0_THRESHOLD) -> tuple[np.ndarray, float]:
    """(mask, threshold) of the voxels whose mean b=0 signal is above B0_MASK_FRACTION of its 98th
    percentile: the mask the app builds when none is given. data: [x, y, z, volumes]; b: b-value per
    volume [s/mm²]."""
    b0 = np.asarray(b) <= b0_threshold
    mean_b0 = np.nan_to_num(data[..., b0].mean(-1) if b0.any() else data.mean(-1), nan=0.0)
    cut = B0_MASK_FRACTION * float(np.percentile(mean_b0, 98))
    mask = mean_b0 > cut
    return (mask if mask.any() else mean_b0 > 0), cut
