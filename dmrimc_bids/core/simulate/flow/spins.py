"""Spins flowing through a resolved network, with the dMRI phase integrated exactly, event by event.

Model (SpinFlowSim's; the SpinFlowSim paper and code, citations: spinflowsim), without its time discretisation:
- spins are seeded in proportion to segment volume π r² L over the segments that carry flow
  (largest-remainder rounding), at a uniformly random point of the segment axis;
- a spin moves along the axis at the segment's mean velocity q/(π r²) (plug flow);
- at a node it enters one of the segments carrying flow out of the node, chosen with probability
  q_e / Σ q_out (perfect mixing);
- at the outlet it continues at the inlet of a copy of the network shifted by (x_out - x_in)
  (periodic boundary: trajectories stay continuous);
- segments are straight and velocities constant, so a trajectory is piecewise linear in time and the
  phase integral ∫ g(t) r(t) dt of a piecewise-constant waveform is exact: a piece r(t) = p + u (t - t0)
  on [a, b] contributes p (m0(b) - m0(a)) + u ((m1(b) - m1(a)) - t0 (m0(b) - m0(a))), with
  m0(t) = ∫₀ᵗ g and m1(t) = ∫₀ᵗ s g(s) ds. No time step, no stored trajectory.
The phase of a measurement of b-value b along unit direction n is φ = sqrt(b) · ∫ g n·r dt / sqrt(∫ q² dt)
(`Waveform.phase_scale`), so one integral per waveform serves every b. The signal is |⟨e^{iφ}⟩|,
averaged over two orthogonal in-plane directions (x, y) for planar networks and over x, y, z in 3D.

Units: µm, ms, µm/ms inside; b in s/mm²; velocities in µm/s on the FlowSolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
from numba import njit, prange

from ...waveforms import B_TO_MS_PER_UM2
from ..kernels import uniform, walker_state
from .resolve import FlowSolution

#: Window of the apparent network branching ANB [ms] (SpinFlowSim: segments traversed in 100 ms).
ANB_WINDOW_MS = 100.0


@dataclass
class Graph:
    """Flow-directed graph of the live segments, ready for the kernels (µm, µm/ms)."""

    up: np.ndarray            # [E] upstream node
    start: np.ndarray         # [E, 3] upstream node position
    direction: np.ndarray     # [E, 3] unit vector along the flow
    length: np.ndarray        # [E] µm
    speed: np.ndarray         # [E] µm/ms
    down: np.ndarray          # [E] downstream node
    out_ptr: np.ndarray       # [N+1] CSR of the segments leaving each node
    out_seg: np.ndarray
    out_cum: np.ndarray       # cumulative branching probabilities (last of each node = 1)
    volume: np.ndarray        # [E] µm³
    inlet: int
    outlet: int
    shift: np.ndarray         # [3] x_out - x_in
    segment_index: np.ndarray  # [E] index of each live segment in the network


def flow_graph(sol: FlowSolution) -> Graph:
    """The live, flow-oriented segments of a resolved network with branching tables."""
    net = sol.network
    live = np.flatnonzero(sol.live)
    seg, q = sol.oriented()
    seg, q = seg[live], q[live]
    up, down = seg[:, 0], seg[:, 1]
    vec = net.nodes[down] - net.nodes[up]
    length = np.linalg.norm(vec, axis=1)
    speed = sol.velocity_um_per_s[live] * 1e-3
    order = np.argsort(up, kind="stable")
    out_ptr = np.zeros(len(net.nodes) + 1, np.int64)
    np.add.at(out_ptr, up + 1, 1)
    out_ptr = np.cumsum(out_ptr)
    out_seg = order.astype(np.int64)
    out_cum = np.empty(len(order))
    for n in range(len(net.nodes)):
        s = out_seg[out_ptr[n]:out_ptr[n + 1]]
        if s.size:
            c = np.cumsum(q[s])
            out_cum[out_ptr[n]:out_ptr[n + 1]] = c / c[-1]
            out_cum[out_ptr[n + 1] - 1] = 1.0
    return Graph(up.astype(np.int64), net.nodes[up].copy(), vec / length[:, None], length, speed,
                 down.astype(np.int64), out_ptr, out_seg, out_cum, np.pi * net.radius_um[live] ** 2 * length,
                 net.inlet, net.outlet, net.nodes[net.outlet] - net.nodes[net.inlet], live)


def seed_counts(volume: np.ndarray, n_spins: int) -> np.ndarray:
    """Spins per segment ∝ volume, rounded by largest remainder so they sum to n_spins."""
    share = n_spins * volume / volume.sum()
    n = np.floor(share).astype(np.int64)
    rest = n_spins - n.sum()
    if rest:
        n[np.argsort(-(share - n), kind="stable")[:rest]] += 1
    return n


def _pack_waveforms(waveforms):
    ptr = [0]
    t, g, c0, c1 = [], [], [], []
    for w in waveforms:
        tb, gv = np.asarray(w.breaks_ms, float), np.asarray(w.values, float)
        h = np.diff(tb)
        t.extend(tb)
        g.extend(np.append(gv, 0.0))
        c0.extend(np.concatenate([[0.0], np.cumsum(gv * h)]))
        c1.extend(np.concatenate([[0.0], np.cumsum(gv * (tb[1:] ** 2 - tb[:-1] ** 2) / 2)]))
        ptr.append(len(t))
    return (np.asarray(ptr, np.int64), np.asarray(t), np.asarray(g), np.asarray(c0), np.asarray(c1))


@njit(cache=True)
def _moments(x, lo, hi, t, g, c0, c1):
    """(m0(x), m1(x)) of the waveform stored in t/g/c0/c1[lo:hi] (g beyond the last break is 0)."""
    if x <= t[lo]:
        return 0.0, 0.0
    k = lo + np.searchsorted(t[lo:hi], x, side="right") - 1
    if k >= hi - 1:
        return c0[hi - 1], c1[hi - 1]
    return c0[k] + g[k] * (x - t[k]), c1[k] + g[k] * 0.5 * (x * x - t[k] * t[k])


@njit(cache=True)
def _next_segment(node, state, out_ptr, out_seg, out_cum):
    """(segment leaving `node`, drawn with probability q_e / Σ q_out, new RNG state); -1 if none."""
    lo, hi = out_ptr[node], out_ptr[node + 1]
    if hi == lo:
        return -1, state
    u, state = uniform(state)
    k = lo
    while k < hi - 1 and out_cum[k] <= u:
        k += 1
    return out_seg[k], state


@njit(cache=True, parallel=True)
def _advect(seed, spin_seg, spin_frac, start, direction, length, speed, down, out_ptr, out_seg, out_cum,
            inlet, outlet, shift, t_end, window, wptr, wt, wg, wc0, wc1, integral, entries, max_events,
            rec_t, rec_stride, rec_pos, rec_copy, rec_seg):
    n_spins, n_w = spin_seg.shape[0], wptr.shape[0] - 1
    n_rec, n_t = rec_pos.shape[0], rec_t.shape[0]
    for s in prange(n_spins):
        slot = s // rec_stride if s % rec_stride == 0 else n_rec  # spins 0, stride, 2·stride, ... are recorded
        state = walker_state(seed, s)
        e = spin_seg[s]
        frac = spin_frac[s]
        ox, oy, oz = 0.0, 0.0, 0.0
        px = start[e, 0] + frac * length[e] * direction[e, 0]
        py = start[e, 1] + frac * length[e] * direction[e, 1]
        pz = start[e, 2] + frac * length[e] * direction[e, 2]
        t0 = 0.0
        m0a = np.zeros(n_w)
        m1a = np.zeros(n_w)
        count = 0
        copy = 0
        rk = 0
        for _ in range(max_events):
            v = speed[e]
            t1 = t0 + (1.0 - frac) * length[e] / v
            tb = min(t1, t_end)
            ux, uy, uz = v * direction[e, 0], v * direction[e, 1], v * direction[e, 2]
            if slot < n_rec:  # recorded spin: its position at the record times within this piece
                while rk < n_t and (rec_t[rk] <= t1 or t1 >= t_end):
                    h = rec_t[rk] - t0
                    rec_pos[slot, rk, 0] = px + ux * h
                    rec_pos[slot, rk, 1] = py + uy * h
                    rec_pos[slot, rk, 2] = pz + uz * h
                    rec_copy[slot, rk] = copy
                    rec_seg[slot, rk] = e
                    rk += 1
            for w in range(n_w):
                m0b, m1b = _moments(tb, wptr[w], wptr[w + 1], wt, wg, wc0, wc1)
                d0 = m0b - m0a[w]
                d1 = (m1b - m1a[w]) - t0 * d0
                integral[s, w, 0] += px * d0 + ux * d1
                integral[s, w, 1] += py * d0 + uy * d1
                integral[s, w, 2] += pz * d0 + uz * d1
                m0a[w], m1a[w] = m0b, m1b
            if t1 >= t_end:
                break
            node = down[e]
            if node == outlet:
                ox += shift[0]
                oy += shift[1]
                oz += shift[2]
                copy += 1
                node = inlet
            nxt, state = _next_segment(node, state, out_ptr, out_seg, out_cum)
            if nxt < 0:  # no way on (impossible in a resolved network): the spin rests at the node
                if slot < n_rec:
                    while rk < n_t:
                        rec_pos[slot, rk, 0] = px + ux * (t1 - t0)
                        rec_pos[slot, rk, 1] = py + uy * (t1 - t0)
                        rec_pos[slot, rk, 2] = pz + uz * (t1 - t0)
                        rec_copy[slot, rk] = copy
                        rec_seg[slot, rk] = e
                        rk += 1
                for w in range(n_w):
                    m0b, m1b = _moments(t_end, wptr[w], wptr[w + 1], wt, wg, wc0, wc1)
                    d0 = m0b - m0a[w]
                    integral[s, w, 0] += (px + ux * (t1 - t0)) * d0
                    integral[s, w, 1] += (py + uy * (t1 - t0)) * d0
                    integral[s, w, 2] += (pz + uz * (t1 - t0)) * d0
                break
            e = nxt
            if t1 < window:
                count += 1
            frac = 0.0
            px, py, pz = start[e, 0] + ox, start[e, 1] + oy, start[e, 2] + oz
            t0 = t1
        entries[s] = count


@njit(cache=True, parallel=True)
def _signals(integral, meas_wave, meas_scale, dirs, out):
    """out[m] = mean over directions d of |mean_s exp(i · scale_m · integral[s, w_m, :]·dirs[d])|."""
    n_s = integral.shape[0]
    for m in prange(meas_wave.shape[0]):
        w = meas_wave[m]
        if w < 0:
            out[m] = 1.0
            continue
        acc = 0.0
        for d in range(dirs.shape[0]):
            re, im = 0.0, 0.0
            for s in range(n_s):
                ph = meas_scale[m] * (integral[s, w, 0] * dirs[d, 0] + integral[s, w, 1] * dirs[d, 1]
                                      + integral[s, w, 2] * dirs[d, 2])
                re += np.cos(ph)
                im += np.sin(ph)
            acc += np.sqrt(re * re + im * im) / n_s
        out[m] = acc / dirs.shape[0]


@dataclass
class SpinTrack:
    """Positions of some spins of a simulation at given times, recorded by the simulation itself.

    times_ms [T]; position_um [R, T, 3] (continuous across the periodic boundary: the network copy a
    spin is in is shifted by copy · shift_um); copy [R, T]: outlet passages so far (0: the original
    network); segment [R, T]: index of the network segment the spin is in (`Network.segments`);
    spin [R]: the recorded spins' indices in the simulation (rows of `FlowSimulation.integral`).
    """

    times_ms: np.ndarray
    position_um: np.ndarray
    copy: np.ndarray
    segment: np.ndarray
    shift_um: np.ndarray
    spin: np.ndarray


@dataclass
class FlowSimulation:
    """Result of one network realisation: signals [M] (1 at b = 0), anb (mean segment entries per spin
    in 100 ms), the per-spin phase integrals [S, W, 3] (µm·ms), the unique waveforms, segments entered
    per spin in the ANB window, and the tracked spins' positions (`SpinTrack`, when asked for)."""

    signals: np.ndarray
    anb: float
    integral: np.ndarray
    waveforms: list
    entries: np.ndarray
    track: SpinTrack | None = None


def default_directions(planar: bool) -> np.ndarray:
    """x, y for planar networks; x, y, z in 3D."""
    return np.eye(3)[:2] if planar else np.eye(3)


def simulate_flow(sol: FlowSolution, b_values, waveforms, n_spins: int = 5000, seed: int = 0,
                  directions=None, anb_window_ms: float = ANB_WINDOW_MS, track_spins: int = 0,
                  track_times_ms=None) -> FlowSimulation:
    """Vascular signals of a resolved network for measurements (b [s/mm²], waveform or None for b = 0).

    directions: unit vectors [D, 3] (default `default_directions`); the signal is the mean of their
    magnitudes. Deterministic for a given seed (one SplitMix64 stream per spin). track_spins > 0 also
    records the positions of track_spins spins, evenly spaced in seeding order (so every segment's spins
    are sampled), at track_times_ms (increasing, within the simulated time max(waveform durations,
    anb_window_ms)) as the simulation moves them (`SpinTrack`); recording changes no signal.
    """
    from ...waveforms import unique_waveforms

    b = np.asarray(b_values, float)
    uniq, idx = unique_waveforms([None if bb <= 0 else w for bb, w in zip(b, waveforms)])
    g = flow_graph(sol)
    counts = seed_counts(g.volume, n_spins)
    spin_seg = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng([seed, 0x5eed])
    spin_frac = rng.random(n_spins)
    t_end = simulated_time_ms(uniq, anb_window_ms)
    wptr, wt, wg, wc0, wc1 = _pack_waveforms(uniq) if uniq else (np.zeros(1, np.int64), np.zeros(1), np.zeros(1),
                                                                  np.zeros(1), np.zeros(1))
    integral = np.zeros((n_spins, max(len(uniq), 0), 3))
    entries = np.zeros(n_spins, np.int64)
    min_time = float(np.min(g.length / g.speed))
    max_events = int(min(1e8, t_end / max(min_time, 1e-12) + 10))
    n_track = min(int(track_spins), n_spins)
    rec_t = np.zeros(0) if n_track == 0 else np.ascontiguousarray(track_times_ms, dtype=float).ravel()
    if n_track and (np.any(np.diff(rec_t) < 0) or rec_t.min() < 0 or rec_t.max() > t_end + 1e-9):
        raise ValueError(f"track_times_ms must increase within [0, {t_end:g}] ms")
    rec_pos = np.zeros((n_track, rec_t.size, 3))
    rec_copy = np.zeros((n_track, rec_t.size), np.int64)
    rec_seg = np.zeros((n_track, rec_t.size), np.int64)
    stride = max(1, n_spins // max(n_track, 1))  # spins are seeded segment by segment: sample them all
    _advect(np.uint64(seed), spin_seg, spin_frac, g.start, g.direction, g.length, g.speed, g.down, g.out_ptr,
            g.out_seg, g.out_cum, g.inlet, g.outlet, g.shift, t_end, anb_window_ms, wptr, wt, wg, wc0, wc1,
            integral, entries, max_events, rec_t, stride, rec_pos, rec_copy, rec_seg)
    track = SpinTrack(rec_t, rec_pos, rec_copy, g.segment_index[rec_seg], g.shift.copy(),
                      np.arange(n_track) * stride) if n_track else None
    dirs = default_directions(sol.network.is_planar) if directions is None else np.atleast_2d(
        np.asarray(directions, float))
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    scale = np.array([0.0 if i < 0 else np.sqrt(bb * B_TO_MS_PER_UM2) * uniq[i].phase_scale()
                      for bb, i in zip(b, idx)])
    out = np.empty(len(b))
    _signals(integral, idx, scale, dirs, out)
    return FlowSimulation(out, float(entries.mean()), integral, uniq, entries, track)


def simulated_time_ms(waveforms, anb_window_ms: float = ANB_WINDOW_MS) -> float:
    """How long `simulate_flow` moves the spins [ms]: the longest waveform or the ANB window."""
    return max([w.duration_ms for w in waveforms if w is not None] + [anb_window_ms, 1e-9])


# ---- the published ANB rule (for comparisons with SpinFlowSim's arrays) ------------------------------
@njit(cache=True, parallel=True)
def _legacy_counts(seed, spin_seg, spin_frac, start_mm, end_mm, speed_mm_s, down, out_ptr, out_seg, out_cum,
                   inlet, outlet, shift_mm, dt_s, n_samples, first, last, counts):
    n_spins = spin_seg.shape[0]
    for s in prange(n_spins):
        state = walker_state(seed, s)
        e = spin_seg[s]
        o0, o1, o2 = 0.0, 0.0, 0.0
        f = spin_frac[s]
        a0 = start_mm[e, 0] + f * (end_mm[e, 0] - start_mm[e, 0])
        a1 = start_mm[e, 1] + f * (end_mm[e, 1] - start_mm[e, 1])
        a2 = start_mm[e, 2] + f * (end_mm[e, 2] - start_mm[e, 2])
        k = 1  # samples written so far (the seeded point is sample 0)
        p0, p1, p2 = a0, a1, a2
        d0, d1, d2 = np.nan, np.nan, np.nan
        c = 0
        have = False
        while k < n_samples:
            b0, b1, b2 = end_mm[e, 0] + o0, end_mm[e, 1] + o1, end_mm[e, 2] + o2
            L = math.sqrt((b0 - a0) ** 2 + (b1 - a1) ** 2 + (b2 - a2) ** 2)
            step = speed_mm_s[e] * dt_s
            n = int(math.floor(L / step)) if step > 0 else 0
            i0, i1, i2 = step * (b0 - a0) / L, step * (b1 - a1) / L, step * (b2 - a2) / L
            x0, x1, x2 = a0, a1, a2
            for j in range(1, n + 1):  # samples 1..n-1 by repeated addition, sample n the node itself
                if k >= n_samples:
                    break
                if j < n:
                    x0 += i0
                    x1 += i1
                    x2 += i2
                else:
                    x0, x1, x2 = b0, b1, b2
                s0, s1, s2 = x0 - p0, x1 - p1, x2 - p2
                if have:
                    if s0 != d0 or s1 != d1 or s2 != d2:
                        c += 1
                else:
                    first[s, 0], first[s, 1], first[s, 2] = s0, s1, s2
                    have = True
                d0, d1, d2 = s0, s1, s2
                p0, p1, p2 = x0, x1, x2
                k += 1
            node = down[e]
            if node == outlet:
                o0 += shift_mm[0]
                o1 += shift_mm[1]
                o2 += shift_mm[2]
                node = inlet
            e, state = _next_segment(node, state, out_ptr, out_seg, out_cum)
            if e < 0:
                break
            a0, a1, a2 = start_mm[e, 0] + o0, start_mm[e, 1] + o1, start_mm[e, 2] + o2
        last[s, 0], last[s, 1], last[s, 2] = d0, d1, d2
        counts[s] = c


def anb_published(sol: FlowSolution, n_spins: int = 5000, seed: int = 0, dt_ms: float = 0.01,
                  n_samples: int = 10002) -> float:
    """ANB as SpinFlowSim computes it (calcMicroPar; the SpinFlowSim paper and code, citations: spinflowsim), emulated.

    Trajectories are time-stepped (dt 10 µs, 10002 samples = 100.01 ms) in mm: inside a segment the
    samples are built by repeated floating-point addition of v·dt·ê, the segment's last sample is the
    node itself (the fractional step is lost), and a segment shorter than one step yields no sample. The
    step vectors of all spins are concatenated and ANB is the number of places where a step differs from
    the previous one in any component, compared with exact float inequality, divided by the number of
    spins. This counts about one change per spin boundary, two per segment transition and one each time
    a coordinate crosses a power of two (rounding of the repeated addition), so it overstates the segments
    spins really enter (`FlowSimulation.anb`) by 2.3-8.3x and depends on the coordinate origin (every
    published realisation has its inlet at the origin: call with such a network for comparable values).
    Seeding and random streams are ours (volume-proportional, SplitMix64), not the published MT19937
    sequence, so values agree with the published arrays only statistically (a few %).
    """
    g = flow_graph(sol)
    counts = seed_counts(g.volume, n_spins)
    spin_seg = np.repeat(np.arange(len(counts)), counts)
    spin_frac = np.random.default_rng([seed, 0x5eed]).random(n_spins)
    start = g.start * 1e-3
    end = start + g.direction * g.length[:, None] * 1e-3
    first = np.full((n_spins, 3), np.nan)
    last = np.full((n_spins, 3), np.nan)
    c = np.zeros(n_spins, np.int64)
    _legacy_counts(np.uint64(seed), spin_seg, spin_frac, start, end, g.speed, g.down, g.out_ptr, g.out_seg,
                   g.out_cum, g.inlet, g.outlet, g.shift * 1e-3, dt_ms * 1e-3, n_samples, first, last, c)
    boundary = np.any(last[:-1] != first[1:], axis=1).sum()  # the concatenation's spin boundaries
    return float((c.sum() + boundary) / n_spins)
