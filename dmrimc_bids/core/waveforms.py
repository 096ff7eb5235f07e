"""Diffusion-gradient waveforms: PGSE, twice-refocused spin echo (TRSE) and sampled custom shapes.

A waveform is the *effective* gradient shape g(t) along one direction (the sign flips of the
refocusing pulses folded in), piecewise constant, with unit peak amplitude. Its amplitude G follows
from the nominal b through b = γ² G² ∫₀ᵀ q(t)² dt, q(t) = ∫₀ᵗ g(t') dt' (Stejskal & Tanner 1965), so the
b of any shape is computed from the shape itself and equals the textbook value for PGSE,
b = γ² G² δ² (Δ - δ/3).

Units: times in ms, b in s/mm², G in mT/m; γ = 2.6752218744e8 rad/(s·T).
The Monte Carlo simulators only need, per waveform, the step averages of g on their time grid and
the moment integral ∫q² dt; a walker's phase for a measurement of b-value b is then
φ = sqrt(b) · ∫ g(t) x(t) dt / sqrt(∫ q² dt) (γ and G cancel), see `phase_scale`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import EX_NOINPUT, InputError
from .protocol import GAMMA_RAD_PER_S_PER_T, Protocol

#: s/mm² -> ms/µm² (b as used with times in ms and lengths in µm).
B_TO_MS_PER_UM2 = 1e-3


@dataclass(frozen=True)
class Waveform:
    """Piecewise-constant unit-amplitude gradient shape.

    breaks_ms: K+1 increasing times [ms] starting at 0; values: g on each [breaks[i], breaks[i+1])
    (dimensionless, max |g| = 1); kind: 'PGSE', 'TRSE' or 'sampled'; timing: the defining
    parameters (ms) for provenance.
    """

    breaks_ms: tuple
    values: tuple
    kind: str = "sampled"
    timing: tuple = ()

    def __post_init__(self):
        t, g = np.asarray(self.breaks_ms, float), np.asarray(self.values, float)
        if t.ndim != 1 or g.size != t.size - 1 or g.size == 0:
            raise ValueError("a waveform needs K+1 break times for K values")
        if np.any(np.diff(t) < 0) or t[0] != 0:
            raise ValueError("waveform break times must start at 0 and increase")

    @property
    def duration_ms(self) -> float:
        """End of the last non-zero lobe [ms]."""
        g, t = np.asarray(self.values), np.asarray(self.breaks_ms)
        nz = np.flatnonzero(g != 0)
        return float(t[nz[-1] + 1]) if nz.size else 0.0

    def net_moment(self) -> float:
        """∫ g dt [ms]: 0 for a refocused (echo-forming) waveform."""
        return float(np.dot(np.diff(self.breaks_ms), self.values))

    def moment_integral(self) -> float:
        """∫₀ᵀ q(t)² dt [ms³], q(t) = ∫₀ᵗ g; exact for piecewise-constant g (q is piecewise linear)."""
        t, g = np.asarray(self.breaks_ms, float), np.asarray(self.values, float)
        h = np.diff(t)
        q0 = np.concatenate([[0.0], np.cumsum(g * h)])[:-1]
        # ∫_0^h (q0 + g s)² ds = q0² h + q0 g h² + g² h³ / 3
        return float(np.sum(q0 * q0 * h + q0 * g * h * h + g * g * h ** 3 / 3.0))

    def b_value(self, amplitude_mT_per_m: float) -> float:
        """b [s/mm²] of this shape played at amplitude G [mT/m]."""
        g_si = amplitude_mT_per_m * 1e-3  # T/m
        return GAMMA_RAD_PER_S_PER_T ** 2 * g_si ** 2 * self.moment_integral() * 1e-9 * 1e-6  # ms³->s³, s/m²->s/mm²

    def amplitude_for_b(self, b: float) -> float:
        """Amplitude G [mT/m] that gives b [s/mm²]."""
        return math.sqrt(b / self.b_value(1.0)) if b > 0 else 0.0

    def step_averages(self, dt_ms: float, n_steps: int) -> np.ndarray:
        """Mean of g over each step [i·dt, (i+1)·dt), i < n_steps (exact)."""
        t, g = np.asarray(self.breaks_ms, float), np.asarray(self.values, float)
        cum = np.concatenate([[0.0], np.cumsum(g * np.diff(t))])
        grid = np.arange(n_steps + 1) * dt_ms
        return np.diff(np.interp(grid, t, cum)) / dt_ms

    def phase_scale(self) -> float:
        """1/sqrt(∫q² dt) [ms^-3/2]: φ = sqrt(b[ms/µm²]) · phase_scale · ∫ g x dt [µm·ms]."""
        m = self.moment_integral()
        return 1.0 / math.sqrt(m) if m > 0 else 0.0

    def describe(self) -> dict:
        return {"kind": self.kind, "timing_ms": [float(x) for x in self.timing]}


def pgse(small_delta_ms: float, big_delta_ms: float) -> Waveform:
    """Pulsed gradient spin echo: +1 on [0, δ), -1 on [Δ, Δ+δ) (effective gradient)."""
    sd, bd = float(small_delta_ms), float(big_delta_ms)
    if not (sd > 0 and bd >= sd):
        raise ValueError(f"PGSE needs δ > 0 and Δ >= δ (δ={sd:g} ms, Δ={bd:g} ms)")
    if bd == sd:
        return Waveform((0.0, sd, 2 * sd), (1.0, -1.0), "PGSE", (sd, bd))
    return Waveform((0.0, sd, bd, bd + sd), (1.0, 0.0, -1.0), "PGSE", (sd, bd))


def trse(delta1: float, delta2: float, delta3: float, delta4: float, onset2: float, onset4: float) -> Waveform:
    """Twice-refocused spin echo (effective gradient, the 180° pulses folded into the signs).

    +1 on [0, δ1), +1 on [Δ12, Δ12+δ2), -1 on [Δ12+δ2, Δ12+δ2+δ3), -1 on [Δ14, Δ14+δ4), as inferred
    from the SpinFlowSim paper's TRSE timings (the SpinFlowSim paper and code, citations: spinflowsim); onset2 = Δ12 and
    onset4 = Δ14 are the onsets of lobes 2 and 4 [ms]. Refocused when δ1+δ2 = δ3+δ4.
    """
    d1, d2, d3, d4, o2, o4 = map(float, (delta1, delta2, delta3, delta4, onset2, onset4))
    if min(d1, d2, d3, d4) <= 0 or o2 < d1 or o4 < o2 + d2 + d3:
        raise ValueError("TRSE lobes must have positive durations and must not overlap "
                         f"(δ1..δ4 = {d1:g}, {d2:g}, {d3:g}, {d4:g} ms, Δ12 = {o2:g}, Δ14 = {o4:g} ms)")
    t = [0.0, d1, o2, o2 + d2, o2 + d2 + d3, o4, o4 + d4]
    g = [1.0, 0.0, 1.0, -1.0, 0.0, -1.0]
    keep_t, keep_g = [t[0]], []
    for i, v in enumerate(g):  # drop zero-length gaps
        if t[i + 1] > t[i]:
            keep_g.append(v)
            keep_t.append(t[i + 1])
    return Waveform(tuple(keep_t), tuple(keep_g), "TRSE", (d1, d2, d3, d4, o2, o4))


def sampled(samples, dt_ms: float) -> Waveform:
    """A custom waveform: samples[i] holds on [i·dt, (i+1)·dt); scaled to unit peak amplitude."""
    g = np.asarray(samples, float).ravel()
    if g.size == 0 or not np.all(np.isfinite(g)) or not np.any(g != 0) or dt_ms <= 0:
        raise ValueError("a sampled waveform needs finite, not all-zero samples and dt > 0")
    g = g / np.max(np.abs(g))
    return Waveform(tuple(np.arange(g.size + 1) * float(dt_ms)), tuple(g), "sampled", (float(dt_ms),))


#: A sampled waveform refocuses when |∫g dt| is at most this fraction of ∫|g| dt.
REFOCUS_TOLERANCE = 1e-3


def read_sampled(path) -> Waveform:
    """A sampled waveform from a text file: two columns, time [ms] (uniform) and effective gradient (any unit),
    refocused (InputError otherwise)."""
    path = Path(path)
    try:
        arr = np.loadtxt(path, ndmin=2)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the waveform file ({exc})", path=path,
                         fix="write two columns: time in ms (uniform steps) and the gradient",
                         exit_code=EX_NOINPUT) from exc
    if arr.shape[1] != 2 or arr.shape[0] < 2:
        raise InputError("a waveform file needs two columns (time ms, gradient) and at least two rows",
                         path=path, fix="write one sample per line: time_ms gradient")
    dt = np.diff(arr[:, 0])
    if np.any(dt <= 0) or np.ptp(dt) > 1e-6 * max(dt.mean(), 1e-12) + 1e-9:
        raise InputError("waveform times must increase in uniform steps", path=path,
                         fix="resample the waveform on a uniform time grid (ms)")
    wave = sampled(arr[:, 1], float(dt.mean()))
    total = float(np.dot(np.diff(wave.breaks_ms), np.abs(wave.values)))
    if abs(wave.net_moment()) > REFOCUS_TOLERANCE * total:
        raise InputError(f"the waveform does not refocus: its net moment ∫g dt is {wave.net_moment():.4g} "
                         f"(∫|g| dt {total:.4g}, gradient unit x ms), so the echo carries a net phase", path=path,
                         fix="give the effective gradient, with the signs of the refocusing pulses folded in "
                             "(its integral over the waveform is 0)")
    return wave


def protocol_waveforms(protocol: Protocol) -> list:
    """One Waveform per measurement (None for b = 0): ``protocol.extra['waveforms']`` if present,
    else PGSE from (δ, Δ)."""
    given = protocol.extra.get("waveforms")
    if given is not None:
        if len(given) != len(protocol):
            raise ValueError(f"{len(given)} waveforms for {len(protocol)} measurements")
        return [None if b <= 0 else w for b, w in zip(protocol.b, given)]
    out = []
    for b, sd, bd in zip(protocol.b, protocol.small_delta_ms, protocol.big_delta_ms):
        out.append(None if b <= 0 else pgse(sd, bd))
    return out


def unique_waveforms(waveforms: list) -> tuple[list, np.ndarray]:
    """Distinct waveforms and, per measurement, the index of its waveform (-1 for None)."""
    uniq, index, seen = [], [], {}
    for w in waveforms:
        if w is None:
            index.append(-1)
            continue
        key = (w.breaks_ms, w.values)
        if key not in seen:
            seen[key] = len(uniq)
            uniq.append(w)
        index.append(seen[key])
    return uniq, np.asarray(index, dtype=np.int64)


# ---- protocol files for the simulators ------------------------------------------------------------
def waveform_from_dict(d: dict) -> Waveform:
    """Inverse of `waveform_to_dict`."""
    return Waveform(tuple(d["breaks_ms"]), tuple(d["values"]), d.get("kind", "sampled"), tuple(d.get("timing", ())))


def waveform_to_dict(w: Waveform) -> dict:
    return {"kind": w.kind, "breaks_ms": [float(x) for x in w.breaks_ms], "values": [float(x) for x in w.values],
            "timing": [float(x) for x in w.timing]}


TRSE_COLUMNS = ("delta1", "delta2", "delta3", "delta4", "onset2", "onset4")


def read_protocol_table(path) -> Protocol:
    """The protocol a simulator synthesises, from a TSV, with one waveform per measurement in
    ``extra['waveforms']``: columns ``b`` (s/mm²), ``small_delta``, ``big_delta`` (ms), optional ``echo_time``
    (ms) and ``waveform``: PGSE (default), TRSE (lobe columns delta1..delta4, onset2 = Δ12, onset4 = Δ14, ms)
    or the path of a sampled waveform file (two columns: time ms, gradient). A DWI sidecar with its bval:
    bids.protocol.read_simulation_protocol."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise InputError("protocol file not found", path=path, exit_code=EX_NOINPUT,
                         fix="give a TSV (b, small_delta, big_delta) or a DWI .json sidecar with its .bval")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or not {"b", "small_delta", "big_delta"} <= set(rows[0]):
        raise InputError("protocol table needs tab-separated columns b, small_delta, big_delta (ms)",
                         path=path, fix="add a header row with those column names (see docs/formats.md in the project)")
    prot = Protocol.from_table(path)
    waves = []
    for i, r in enumerate(rows):
        kind = (r.get("waveform") or "PGSE").strip()
        if prot.b[i] <= 0:
            waves.append(None)
            continue
        try:
            if kind.upper() == "PGSE":
                waves.append(pgse(prot.small_delta_ms[i], prot.big_delta_ms[i]))
            elif kind.upper() == "TRSE":
                waves.append(trse(*(float(r[c]) for c in TRSE_COLUMNS)))
            else:
                f = Path(kind)
                waves.append(read_sampled(f if f.is_absolute() else path.parent / f))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"row {i + 1}: bad {kind} timing ({exc})", path=path,
                             fix="PGSE needs small_delta <= big_delta; TRSE needs columns "
                                 + ", ".join(TRSE_COLUMNS) + " (ms)") from exc
    prot.extra["waveforms"] = waves
    return prot


def protocol_to_json(protocol: Protocol) -> dict:
    """JSON-able protocol including every measurement's waveform (for simulation jobs)."""
    waves = protocol_waveforms(protocol)
    return {"b": [float(x) for x in protocol.b], "small_delta": [float(x) for x in protocol.small_delta_ms],
            "big_delta": [float(x) for x in protocol.big_delta_ms],
            "echo_time": [None if not np.isfinite(x) else float(x) for x in protocol.echo_time_ms],
            "waveforms": [None if w is None else waveform_to_dict(w) for w in waves]}


def protocol_from_json(d: dict) -> Protocol:
    te = [np.nan if x is None else x for x in d["echo_time"]]
    prot = Protocol(d["b"], d["small_delta"], d["big_delta"], te)
    prot.extra["waveforms"] = [None if w is None else waveform_from_dict(w) for w in d["waveforms"]]
    return prot
