"""Per-walker Monte Carlo routines (numba), shared verbatim by the CPU driver and the CUDA kernel.

Only scalar maths, tuples and arrays passed in: every routine's ``py_func`` is re-compiled as a CUDA
device function by cuda.py, so the CPU and GPU walks have the same physics by construction.

Physics (units µm, ms, µm²/ms):
- steps of fixed 3D length ℓ = sqrt(6·D·dt) in a uniformly random direction, of which only the
  in-plane part moves the walker (walls are vertical: a prism substrate reduces exactly to this 2D
  walk; the Histo-μSim paper and code, citations: histousim);
- elastic (specular) reflection at membranes; a hit crosses instead with probability
  P = p_ij/(1 + (p_ij + p_ji)/2), p_ij = (2/3)·κ·ℓ_i/D_i (flux continuity J = κ·Δρ for fixed-length
  3D steps, Fieremans & Lee 2018; finite-step normalisation of Lee et al. 2021, as in MC/DC);
  valid for P << 1 and ℓ << cell size; after a crossing the rest of the step continues in the same
  direction, its length scaled by sqrt(D_new/D_old);
- periodic tile; membranes are looked up in a uniform grid (CSR lists of segment copies per grid
  cell); a step may hit several (nanometre) edges and vertices: the nearest hit is taken, the
  segment just hit is excluded from the next test, segment ends are matched with a 1e-12 tolerance
  so a ray through a vertex always hits one of its edges, and the walker is set EPS_UM off the
  membrane on the side it belongs to;
- the phase integral ∫ g(t)·x(t) dt of every waveform is accumulated on the fly by summation by
  parts over the prefix integral of the (unwrapped) displacement, trapezoid rule in time.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

#: Distance a walker is kept from a membrane after a hit [µm] (coordinates are <~1e3 µm: 1e4 ulp).
EPS_UM = 1e-10
#: Tolerance on the segment parameter u in [0, 1] so a ray through a vertex hits an edge.
EPS_U = 1e-12
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2^-53


@njit(cache=True)
def mix64(z):
    """SplitMix64 finaliser (Steele, Lea & Flood 2014): a bijective 64-bit hash."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True)
def uniform(state):
    """(u in [0, 1), new state): SplitMix64 stream, one per walker."""
    s = state + _GOLDEN
    return float(mix64(s) >> _S11) * _TO_UNIT, s


@njit(cache=True)
def walker_state(seed, walker):
    """Initial RNG state of a walker: depends only on (seed, global walker index)."""
    return mix64(np.uint64(seed) ^ mix64(np.uint64(walker) + _GOLDEN))


@njit(cache=True)
def first_hit(px, py, vx, vy, last, cell_ptr, cell_seg, cell_xy, nx, ny, hx, hy, lx, ly):
    """Nearest membrane hit of the move p -> p + v: (t in [0, 1], segment id, entry) or (2, -1, -1).

    Grid cells outside the tile are wrapped, their segments shifted by the tile size.
    """
    x0, x1 = min(px, px + vx), max(px, px + vx)
    y0, y1 = min(py, py + vy), max(py, py + vy)
    ix0, ix1 = int(math.floor(x0 / hx)), int(math.floor(x1 / hx))
    iy0, iy1 = int(math.floor(y0 / hy)), int(math.floor(y1 / hy))
    best_t, best_s, best_j = 2.0, -1, -1
    for ix in range(ix0, ix1 + 1):
        ixw = ix % nx
        sx = ((ix - ixw) // nx) * lx
        for iy in range(iy0, iy1 + 1):
            iyw = iy % ny
            sy = ((iy - iyw) // ny) * ly
            c = iyw * nx + ixw
            for j in range(cell_ptr[c], cell_ptr[c + 1]):
                s = cell_seg[j]
                if s == last:
                    continue
                ax = cell_xy[j, 0] + sx
                ay = cell_xy[j, 1] + sy
                ex = cell_xy[j, 2] - cell_xy[j, 0]
                ey = cell_xy[j, 3] - cell_xy[j, 1]
                den = vx * ey - vy * ex
                if den == 0.0:
                    continue
                wx = ax - px
                wy = ay - py
                t = (wx * ey - wy * ex) / den
                if t < 0.0 or t > 1.0 or t >= best_t:
                    continue
                u = (wx * vy - wy * vx) / den
                if u < -EPS_U or u > 1.0 + EPS_U:
                    continue
                best_t, best_s, best_j = t, s, j
    return best_t, best_s, best_j


@njit(cache=True)
def locate(px, py, owner, cell_ptr, cell_seg, cell_xy, nx, ny, hx, hy, lx, ly):
    """Compartment of a point: the index of the cell containing it, or -1 (extra-cellular).

    The first membrane met by a ray along +x belongs to the cell containing the point, if any;
    outlines are counter-clockwise, so the point is inside when it lies left of that edge.
    """
    t, s, j = first_hit(px, py, lx, 0.0, -1, cell_ptr, cell_seg, cell_xy, nx, ny, hx, hy, lx, ly)
    if s < 0:
        return -1
    ax, ay = cell_xy[j, 0], cell_xy[j, 1]
    ex, ey = cell_xy[j, 2] - ax, cell_xy[j, 3] - ay
    # the hit segment may be a periodic copy: bring it next to the point along x
    hit_x = px + t * lx
    shift = math.floor(hit_x / lx) * lx
    ax += shift
    if ex * (py - ay) - ey * (px - ax) > 0.0:
        return owner[s]
    return -1


@njit(cache=True)
def walk(i, seed, walker0, start_xy, cfg, d_in, d_ex, step_in, step_ex, p_ie, p_ei, n_steps, dt, max_bounce,
         owner, cell_ptr, cell_seg, cell_xy, nx, ny, hx, hy, lx, ly, ev_step, ev_ptr, ev_wave, ev_coef,
         phase, disp, label, bounced_out, track_lo, track):
    """Walk walker i (global index walker0 + i) for n_steps; write its phase integrals phase[i, w, axis]
    (µm·ms scaled per waveform), final displacement and position disp[i] = (dx, dy, x, y) (µm), labels at
    start/end and the number of steps cut short by max_bounce. Walkers track_lo <= i < track_lo + len(track)
    also write track[i - track_lo, k] = (x, y, dx, dy, compartment) before step 0 and after every step k
    (position in the tile, unwrapped displacement [µm], cell index or -1)."""
    state = walker_state(seed, walker0 + i)
    if start_xy.shape[0] > 0:
        x, y = start_xy[i, 0], start_xy[i, 1]
    else:
        u, state = uniform(state)
        x = u * lx
        u, state = uniform(state)
        y = u * ly
    comp = locate(x, y, owner, cell_ptr, cell_seg, cell_xy, nx, ny, hx, hy, lx, ly)
    label[i, 0] = comp
    tr = i - track_lo
    if tr < 0 or tr >= track.shape[0]:
        tr = -1
    else:
        track[tr, 0, 0] = x
        track[tr, 0, 1] = y
        track[tr, 0, 2] = 0.0
        track[tr, 0, 3] = 0.0
        track[tr, 0, 4] = comp
    c = cfg[i]
    ux, uy, pux, puy, qx, qy = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    e = 0
    n_ev = ev_step.shape[0]
    cut = 0
    two_pi = 2.0 * math.pi
    for k in range(n_steps):
        if comp >= 0:
            rem = step_in[c]
        else:
            rem = step_ex[c]
        u, state = uniform(state)
        cz = 2.0 * u - 1.0
        sz = math.sqrt(max(0.0, 1.0 - cz * cz))
        u, state = uniform(state)
        a = two_pi * u
        dx, dy = sz * math.cos(a), sz * math.sin(a)
        last = -1
        done = False
        for _ in range(max_bounce):
            vx, vy = rem * dx, rem * dy
            t, s, j = first_hit(x, y, vx, vy, last, cell_ptr, cell_seg, cell_xy, nx, ny, hx, hy, lx, ly)
            if s < 0:
                x += vx
                y += vy
                ux += vx
                uy += vy
                done = True
                break
            ex = cell_xy[j, 2] - cell_xy[j, 0]
            ey = cell_xy[j, 3] - cell_xy[j, 1]
            el = math.sqrt(ex * ex + ey * ey)
            nxu, nyu = -ey / el, ex / el  # left normal: towards the cell interior
            hitx, hity = x + t * vx, y + t * vy
            side = 1.0 if (dx * nxu + dy * nyu) < 0.0 else -1.0  # +1: arriving from the interior side
            if comp >= 0:
                pc = p_ie[c]
            else:
                pc = p_ei[c]
            u, state = uniform(state)
            rem = rem * (1.0 - t)
            if u < pc:  # cross: continue straight on the other side
                new_comp = owner[s] if comp < 0 else -1
                if new_comp >= 0:
                    rem = rem * math.sqrt(d_in[c] / d_ex[c])
                else:
                    rem = rem * math.sqrt(d_ex[c] / d_in[c])
                comp = new_comp
                nxp = hitx - side * EPS_UM * nxu
                nyp = hity - side * EPS_UM * nyu
            else:  # reflect specularly
                dn = dx * nxu + dy * nyu
                dx -= 2.0 * dn * nxu
                dy -= 2.0 * dn * nyu
                nxp = hitx + side * EPS_UM * nxu
                nyp = hity + side * EPS_UM * nyu
            ux += nxp - x
            uy += nyp - y
            x, y = nxp, nyp
            last = s
        if not done:
            cut += 1
        if x >= lx:
            x -= lx
        elif x < 0.0:
            x += lx
        if y >= ly:
            y -= ly
        elif y < 0.0:
            y += ly
        qx += 0.5 * (pux + ux) * dt
        qy += 0.5 * (puy + uy) * dt
        pux, puy = ux, uy
        kk = k + 1
        if tr >= 0:
            track[tr, kk, 0] = x
            track[tr, kk, 1] = y
            track[tr, kk, 2] = ux
            track[tr, kk, 3] = uy
            track[tr, kk, 4] = comp
        while e < n_ev and ev_step[e] == kk:
            for q in range(ev_ptr[e], ev_ptr[e + 1]):
                w = ev_wave[q]
                phase[i, w, 0] += ev_coef[q] * qx
                phase[i, w, 1] += ev_coef[q] * qy
            e += 1
    disp[i, 0] = ux
    disp[i, 1] = uy
    disp[i, 2] = x
    disp[i, 3] = y
    label[i, 1] = comp
    bounced_out[i] = cut


@njit(cache=True, parallel=True)
def walk_all(seed, walker0, start_xy, cfg, d_in, d_ex, step_in, step_ex, p_ie, p_ei, n_steps, dt, max_bounce,
             owner, cell_ptr, cell_seg, cell_xy, nx, ny, hx, hy, lx, ly, ev_step, ev_ptr, ev_wave, ev_coef,
             phase, disp, label, bounced_out, track_lo, track):
    """CPU driver: every walker of the batch, in parallel (prange)."""
    for i in prange(cfg.shape[0]):
        walk(i, seed, walker0, start_xy, cfg, d_in, d_ex, step_in, step_ex, p_ie, p_ei, n_steps, dt, max_bounce,
             owner, cell_ptr, cell_seg, cell_xy, nx, ny, hx, hy, lx, ly, ev_step, ev_ptr, ev_wave, ev_coef,
             phase, disp, label, bounced_out, track_lo, track)


@njit(cache=True)
def accumulate_one(g, m, a, phase, group_start, group_stop, meas_wave, meas_sqrt_b, acc):
    """acc[g, m, a] += Σ over walkers of group g of exp(-i·sqrt(b_m)·φ) (real, imaginary)."""
    w = meas_wave[m]
    sb = meas_sqrt_b[m]
    re, im = 0.0, 0.0
    for i in range(group_start[g], group_stop[g]):
        ph = sb * phase[i, w, a]
        re += math.cos(ph)
        im -= math.sin(ph)
    acc[g, m, a, 0] += re
    acc[g, m, a, 1] += im


@njit(cache=True, parallel=True)
def accumulate(phase, group_start, group_stop, meas_wave, meas_sqrt_b, acc):
    """Sum the complex signal of every (group, measurement, axis) over the walkers of this batch."""
    n_g, n_m = acc.shape[0], acc.shape[1]
    for job in prange(n_g * n_m * 2):
        g = job // (n_m * 2)
        m = (job // 2) % n_m
        a = job % 2
        if meas_wave[m] >= 0:
            accumulate_one(g, m, a, phase, group_start, group_stop, meas_wave, meas_sqrt_b, acc)
