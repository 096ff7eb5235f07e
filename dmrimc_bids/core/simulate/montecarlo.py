"""Monte Carlo diffusion in histology substrates: walkers -> dMRI signals for any protocol.

`simulate` walks ``n_walkers`` walkers for each configuration (D0in, D0ex, κ) in a Substrate and
returns the b0-normalised signal of every measurement of a Protocol (PGSE, TRSE or sampled
waveforms, see core/waveforms.py). The walk itself is kernels.walk (physics and the sources of the
permeability rule in its module docstring); this module builds the membrane grid and the waveform
events, batches walkers (every configuration of a run in one batch, so a GPU is filled), reduces
phases to signals and reports throughput in walker-steps per second.

Signals: per walker and in-plane axis (x, y) the phase of measurement m is
φ = sqrt(b_m)·∫g·x dt/sqrt(∫q² dt) (waveforms.py); S = (|<e^{-iφx}>| + |<e^{-iφy}>|)/2, the
magnitude average of two orthogonal in-plane gradient directions (as Histo-μSim). No trajectory is
stored. Runs are deterministic for a seed: walker i's random stream depends on (seed, i) only, so
results do not depend on the batch size or the number of threads.

Units: µm, ms, D in µm²/ms, κ in µm/s (converted to µm/ms inside), b in s/mm².
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..protocol import Protocol
from ..waveforms import B_TO_MS_PER_UM2, protocol_waveforms, unique_waveforms
from . import kernels
from .substrate import Substrate

#: Histo-μSim's time step: 110 ms in 2,370 steps [ms] (the Histo-μSim paper and code, citations: histousim).
DEFAULT_DT_MS = 110.0 / 2370.0
#: Walkers per configuration of the published Histo-μSim (the --preset histousim and a simulate() call default).
HISTOUSIM_WALKERS = 20000
#: Walker steps per CPU batch: a batch takes a few seconds on 2 cores, so that progress (with its ETA) moves
#: and Ctrl-C is honoured within seconds. The GPU keeps its large batches.
CPU_BATCH_STEPS = 3e7
#: Largest number of membrane bounces within one step before the step is cut short.
MAX_BOUNCES = 256


@dataclass
class MembraneGrid:
    """Uniform grid over the tile with, per grid cell, copies of the segments that overlap it."""

    nx: int
    ny: int
    hx: float
    hy: float
    cell_ptr: np.ndarray
    cell_seg: np.ndarray
    cell_xy: np.ndarray
    owner: np.ndarray
    tile: tuple

    @classmethod
    def build(cls, substrate: Substrate, spacing_um: float = 1.0) -> "MembraneGrid":
        """Grid of about ``spacing_um`` µm (exactly tiling the periodic box) over the substrate."""
        lx, ly = map(float, substrate.tile_um)
        nx, ny = max(1, int(round(lx / spacing_um))), max(1, int(round(ly / spacing_um)))
        hx, hy = lx / nx, ly / ny
        segs, owner = substrate.segments()
        if len(segs) == 0:
            return cls(nx, ny, hx, hy, np.zeros(nx * ny + 1, np.int64), np.zeros(0, np.int64),
                       np.zeros((0, 4)), np.zeros(0, np.int64), (lx, ly))
        ix0 = np.clip(np.floor(np.minimum(segs[:, 0], segs[:, 2]) / hx).astype(np.int64), 0, nx - 1)
        ix1 = np.clip(np.floor(np.maximum(segs[:, 0], segs[:, 2]) / hx).astype(np.int64), 0, nx - 1)
        iy0 = np.clip(np.floor(np.minimum(segs[:, 1], segs[:, 3]) / hy).astype(np.int64), 0, ny - 1)
        iy1 = np.clip(np.floor(np.maximum(segs[:, 1], segs[:, 3]) / hy).astype(np.int64), 0, ny - 1)
        sid, cid = [], []
        for dx in range(int((ix1 - ix0).max()) + 1):
            for dy in range(int((iy1 - iy0).max()) + 1):
                ok = (ix0 + dx <= ix1) & (iy0 + dy <= iy1)
                sid.append(np.flatnonzero(ok))
                cid.append((iy0[ok] + dy) * nx + ix0[ok] + dx)
        sid, cid = np.concatenate(sid), np.concatenate(cid)
        order = np.lexsort((sid, cid))
        sid, cid = sid[order], cid[order]
        ptr = np.zeros(nx * ny + 1, np.int64)
        np.add.at(ptr, cid + 1, 1)
        return cls(nx, ny, hx, hy, np.cumsum(ptr), sid.astype(np.int64), np.ascontiguousarray(segs[sid]),
                   owner, (lx, ly))

    def args(self):
        return (self.owner, self.cell_ptr, self.cell_seg, self.cell_xy, self.nx, self.ny, self.hx, self.hy,
                self.tile[0], self.tile[1])


@dataclass
class WaveformEvents:
    """Where the phase integrals pick up the displacement prefix integral (summation by parts)."""

    n_steps: int
    dt_ms: float
    step: np.ndarray   # [E] step boundaries k (1..n_steps) with at least one coefficient
    ptr: np.ndarray    # [E+1]
    wave: np.ndarray   # [nnz] waveform index
    coef: np.ndarray   # [nnz] (g_{k-1} - g_k)·phase_scale
    n_waves: int

    @classmethod
    def build(cls, waveforms: list, dt_ms: float, duration_ms: float | None = None) -> "WaveformEvents":
        end = max([w.duration_ms for w in waveforms], default=0.0)
        duration = max(end, duration_ms or 0.0)
        n_steps = max(1, int(math.ceil(duration / dt_ms - 1e-9)))
        ks, ws, cs = [], [], []
        for wi, w in enumerate(waveforms):
            g = np.concatenate([w.step_averages(dt_ms, n_steps), [0.0]])
            c = (np.concatenate([[0.0], g[:-1]]) - g)[1:] * w.phase_scale()  # boundary k = 1..n_steps
            nz = np.flatnonzero(np.abs(c) > 1e-14 * w.phase_scale())
            ks.append(nz + 1)
            ws.append(np.full(nz.size, wi))
            cs.append(c[nz])
        if not ks:
            return cls(n_steps, dt_ms, np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64),
                       np.zeros(0), 0)
        k, wv, cf = np.concatenate(ks), np.concatenate(ws), np.concatenate(cs)
        order = np.lexsort((wv, k))
        k, wv, cf = k[order], wv[order], cf[order]
        uk, start = np.unique(k, return_index=True)
        ptr = np.concatenate([start, [k.size]]).astype(np.int64)
        return cls(n_steps, dt_ms, uk.astype(np.int64), ptr, wv.astype(np.int64), cf.astype(np.float64),
                   len(waveforms))


def crossing_probabilities(d_in, d_ex, kappa_um_per_s, dt_ms):
    """Per-hit crossing probabilities (intra->extra, extra->intra) for fixed-length 3D steps.

    p_ij = (2/3)·κ·ℓ_i/D_i with ℓ_i = sqrt(6·D_i·dt), normalised by 1 + (p_ie + p_ei)/2 (Fieremans &
    Lee 2018 NeuroImage 181:314; Lee et al. 2021 J Neurosci Methods 351:109018; MC/DC beta). Needs
    P << 1 and ℓ << cell size.
    """
    d_in, d_ex, kap = (np.asarray(v, float) for v in (d_in, d_ex, kappa_um_per_s))
    kap = kap * 1e-3  # µm/s -> µm/ms
    l_in, l_ex = np.sqrt(6 * d_in * dt_ms), np.sqrt(6 * d_ex * dt_ms)
    p_ie, p_ei = 2.0 / 3.0 * kap * l_in / d_in, 2.0 / 3.0 * kap * l_ex / d_ex
    norm = 1.0 + 0.5 * (p_ie + p_ei)
    return p_ie / norm, p_ei / norm


#: Largest per-hit crossing probability and step length / smallest cell radius before a warning.
MAX_CROSSING_P, MAX_STEP_TO_RADIUS = 0.1, 0.5


def check_step_conditions(substrate: Substrate, step_in, step_ex, p_ie, p_ei) -> list:
    """Warn (and return the messages) when the permeability rule's conditions P << 1 and ℓ << cell
    size are not met; shorten dt (--dt-ms) to fix both."""
    import warnings

    msgs = []
    p_max = float(max(np.max(p_ie, initial=0), np.max(p_ei, initial=0)))
    if p_max > MAX_CROSSING_P:
        msgs.append(f"crossing probability per hit up to {p_max:.2f} (> {MAX_CROSSING_P}): the permeability rule "
                    "needs P << 1; shorten the time step")
    if substrate.n_cells:
        # the 10th percentile of the equivalent radii: clipped edge pieces are allowed to be small
        r_small = float(np.percentile(np.sqrt(np.array([c.area for c in substrate.cells]) / math.pi), 10))
        l_max = float(max(np.max(step_in), np.max(step_ex)))
        if l_max > MAX_STEP_TO_RADIUS * r_small:
            msgs.append(f"step length {l_max:.2f} µm exceeds {MAX_STEP_TO_RADIUS} x the small cells' radius "
                        f"({r_small:.2f} µm, 10th percentile): restricted signals and the realised permeability "
                        "are biased; shorten the time step")
    for m in msgs:
        warnings.warn(f"{substrate.name}: {m}", stacklevel=3)
    return msgs


@dataclass
class WalkerTrack:
    """Every step of a few walkers of one configuration, recorded by the walk itself (kernels.walk).

    position_um [N, K+1, 2]: in the periodic tile; displacement_um [N, K+1, 2]: unwrapped, from the
    start; compartment [N, K+1]: the cell a walker is in (-1: extra-cellular); entry k is the state
    after k steps of dt_ms. config: (D0in µm²/ms, D0ex µm²/ms, κ µm/s).
    """

    dt_ms: float
    position_um: np.ndarray
    displacement_um: np.ndarray
    compartment: np.ndarray
    config: tuple
    tile_um: tuple

    @property
    def times_ms(self) -> np.ndarray:
        return np.arange(self.position_um.shape[1]) * self.dt_ms

    def phase(self, waveform, b: float) -> np.ndarray:
        """Phase [rad] accumulated up to each step [N, K+1, 2] (x, y gradient) for a measurement of b
        [s/mm²] with this waveform: sqrt(b)·Σ_{j<k} ḡ_j·(u_j + u_{j+1})/2·dt / sqrt(∫q² dt), the walk's
        own discretisation (step-averaged g, trapezoid displacement), so the last entry is the phase
        the signal of the simulation used."""
        n = self.position_um.shape[1] - 1
        g = waveform.step_averages(self.dt_ms, n)
        u = self.displacement_um
        mid = 0.5 * (u[:, :-1] + u[:, 1:])
        acc = np.cumsum(g[None, :, None] * mid * self.dt_ms, axis=1)
        scale = math.sqrt(max(b, 0.0) * B_TO_MS_PER_UM2) * waveform.phase_scale()
        return scale * np.concatenate([np.zeros((u.shape[0], 1, 2)), acc], axis=1)


@dataclass
class MCResult:
    """Signals [n_configs, n_measurements] (mean of the x and y magnitudes) and run facts."""

    signals: np.ndarray
    signals_xy: np.ndarray
    configs: np.ndarray          # [n_configs, 3]: D0in, D0ex, kappa
    n_walkers: int
    n_steps: int
    dt_ms: float
    seconds: float
    walker_steps: float
    cut_steps: int
    device: str
    walkers: dict = field(default_factory=dict)
    track: WalkerTrack | None = None

    @property
    def steps_per_second(self) -> float:
        return self.walker_steps / self.seconds if self.seconds > 0 else math.nan


def simulate(substrate: Substrate, protocol: Protocol, d0in, d0ex, kappa, *, device: str = "cpu",
             **options) -> MCResult:
    """Simulate every configuration (d0in[i], d0ex[i], kappa[i]) [µm²/ms, µm²/ms, µm/s] with n_walkers.

    Options (keywords of `_simulate`): n_walkers, dt_ms, seed, grid_um (membrane look-up grid [µm]),
    start_xy: optional [n_walkers, 2] start positions (µm, in the tile), reused for every
    configuration; by default walkers start uniformly over the tile. keep_walkers: also return the
    per-walker phases, displacements and labels (memory!). walker_offset: global index of this call's
    first walker (its random streams are (seed, index)): a job simulating configurations k.. of a larger
    grid passes k·n_walkers, so results do not depend on how the grid is split into jobs.
    track_walkers > 0 records every step of the first track_walkers walkers of configuration
    track_config (`WalkerTrack`, ~40 bytes per walker-step); recording changes no signal.
    device: 'cpu', 'gpu' (numba.cuda) or 'auto' (the GPU when one is visible; when CUDA turns out unusable
    there (cudacompat.cuda_unavailable_errors) the walk is redone on the CPU with one warning line; any other
    error is raised)."""
    from ..cudacompat import cuda_unavailable_errors, warn_cpu_fallback

    resolved = resolve_device(device)
    if device == "auto" and resolved == "gpu":
        try:
            return _simulate(substrate, protocol, d0in, d0ex, kappa, device="gpu", **options)
        except cuda_unavailable_errors() as exc:  # no usable CUDA: the CPU gives the same physics
            warn_cpu_fallback("Monte Carlo walk", exc)
            resolved = "cpu"
    return _simulate(substrate, protocol, d0in, d0ex, kappa, device=resolved, **options)


def _simulate(substrate: Substrate, protocol: Protocol, d0in, d0ex, kappa, *, n_walkers: int = HISTOUSIM_WALKERS,
             dt_ms: float = DEFAULT_DT_MS, seed: int = 0, grid_um: float = 1.0, start_xy=None,
             device: str = "cpu", batch_walkers: int = 1_000_000, keep_walkers: bool = False,
             max_bounce: int = MAX_BOUNCES, progress: bool = False, walker_offset: int = 0,
             track_walkers: int = 0, track_config: int = 0) -> MCResult:
    """The walk of `simulate` on one resolved device ('cpu' or 'gpu')."""
    d0in, d0ex, kappa = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, float)) for v in (d0in, d0ex, kappa)))
    if np.any(d0in <= 0) or np.any(d0ex <= 0) or np.any(kappa < 0):
        raise ValueError("diffusivities must be > 0 and permeability >= 0")
    n_cfg = d0in.size
    ev, meas_wave, grid, (step_in, step_ex, p_ie, p_ei) = _walk_setup(substrate, protocol, d0in, d0ex, kappa,
                                                                      dt_ms, grid_um)
    start = np.zeros((0, 2)) if start_xy is None else np.ascontiguousarray(np.asarray(start_xy, float).reshape(-1, 2))
    n_walkers = len(start) if len(start) else n_walkers
    total = n_cfg * n_walkers
    n_track = min(int(track_walkers), n_walkers)
    if n_track and not 0 <= track_config < n_cfg:
        raise ValueError(f"track_config {track_config} is not one of the {n_cfg} configurations")
    track = np.zeros((n_track, ev.n_steps + 1, 5))
    track_start = track_config * n_walkers
    # explicit starts are shared by every configuration: one configuration per batch then
    per_batch = max(n_walkers, (batch_walkers // n_walkers) * n_walkers) if start.shape[0] == 0 else n_walkers
    device = resolve_device(device)
    if device == "cpu" and start.shape[0] == 0:  # walkers are seeded by their index: any batching, same walk
        per_batch = int(min(per_batch, max(1000, CPU_BATCH_STEPS // max(1, ev.n_steps))))
    acc = np.zeros((n_cfg, len(protocol), 2, 2))
    sqrt_b = np.sqrt(np.maximum(protocol.b, 0) * B_TO_MS_PER_UM2)
    kept = {"phase": [], "disp": [], "label": []}
    cut = 0
    runner, reducer = _runner(device)
    bar = _progress_bar(total, substrate.name) if progress else None
    t0 = time.perf_counter()
    for first in range(0, total, per_batch):
        n = min(per_batch, total - first)
        cfg = (np.arange(first, first + n) // n_walkers).astype(np.int64)
        phase, disp, label, bounced = (np.zeros((n, max(ev.n_waves, 1), 2)), np.zeros((n, 4)),
                                       np.zeros((n, 2), np.int64), np.zeros(n, np.int64))
        runner(np.uint64(seed), np.int64(walker_offset + first), start, cfg, d0in, d0ex, step_in, step_ex, p_ie, p_ei,
               np.int64(ev.n_steps), float(dt_ms), np.int64(max_bounce), *grid.args(), ev.step, ev.ptr, ev.wave,
               ev.coef, phase, disp, label, bounced, np.int64(track_start - first), track)
        _accumulate(reducer, phase, cfg, meas_wave, sqrt_b, acc)
        cut += int(bounced.sum())
        for key, value in (("phase", phase), ("disp", disp), ("label", label)) if keep_walkers else ():
            kept[key].append(value)
        if bar is not None:
            bar.update(n)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    mag = np.hypot(acc[..., 0], acc[..., 1]) / n_walkers
    mag[:, meas_wave < 0, :] = 1.0
    walkers = {k: np.concatenate(v) for k, v in kept.items()} if keep_walkers else {}
    if keep_walkers:
        walkers["meas_wave"] = meas_wave
    tracked = None if not n_track else WalkerTrack(
        float(dt_ms), track[..., :2], track[..., 2:4], track[..., 4].astype(np.int64),
        (float(d0in[track_config]), float(d0ex[track_config]), float(kappa[track_config])),
        tuple(map(float, substrate.tile_um)))
    return MCResult(mag.mean(-1), mag, np.stack([d0in, d0ex, kappa], 1), n_walkers, ev.n_steps, dt_ms, seconds,
                    float(total) * ev.n_steps, cut, device, walkers, tracked)


def _walk_setup(substrate, protocol, d0in, d0ex, kappa, dt_ms, grid_um):
    """(waveform events, measurement -> waveform index, membrane grid, (steps in/ex [µm], crossing
    probabilities in->ex, ex->in)) of a walk, its step conditions checked."""
    waves, meas_wave = unique_waveforms(protocol_waveforms(protocol))
    ev = WaveformEvents.build(waves, dt_ms)
    grid = MembraneGrid.build(substrate, grid_um)
    p_ie, p_ei = crossing_probabilities(d0in, d0ex, kappa, dt_ms)
    step_in, step_ex = np.sqrt(6 * d0in * dt_ms), np.sqrt(6 * d0ex * dt_ms)
    check_step_conditions(substrate, step_in, step_ex, p_ie, p_ei)
    return ev, meas_wave, grid, (step_in, step_ex, p_ie, p_ei)


def _accumulate(reducer, phase, cfg, meas_wave, sqrt_b, acc) -> None:
    """Add one batch's per-configuration sums of the walkers' phase factors to acc [n_cfg, M, 2, 2]."""
    groups = np.arange(cfg[0], cfg[-1] + 1)
    gs = np.searchsorted(cfg, groups).astype(np.int64)
    ge = np.searchsorted(cfg, groups, side="right").astype(np.int64)
    part = np.zeros((len(groups), acc.shape[1], 2, 2))
    reducer(phase, gs, ge, meas_wave, sqrt_b, part)
    acc[groups] += part


def _progress_bar(total: int, name: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="walker", desc=f"MC {name}", leave=False)


def resolve_device(device: str) -> str:
    """'cpu', 'gpu' or 'auto' (the GPU when numba.cuda sees one) -> 'cpu' | 'gpu'."""
    if device == "auto":
        try:
            from . import cuda as mc_cuda
        except ImportError:  # a numba without its CUDA target and no numba-cuda: no GPU path
            return "cpu"
        return "gpu" if mc_cuda.available() else "cpu"
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device is 'cpu', 'gpu' or 'auto', not {device!r}")
    return device


def _runner(device: str):
    if device == "gpu":
        from . import cuda as mc_cuda
        return mc_cuda.walk_all, mc_cuda.accumulate
    return kernels.walk_all, kernels.accumulate
