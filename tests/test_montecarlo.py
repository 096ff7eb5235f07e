"""Monte Carlo simulator against analytic results.

Every tolerance is the Monte Carlo standard error of the quantity (stated per test; ``4 SE`` keeps
the false-alarm rate below 1e-4 per comparison) plus, where a model is itself approximate, that
model's own error, stated beside it.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely

from dmrimc_bids.core.analytic import restricted_signal
from dmrimc_bids.core.protocol import Protocol
from dmrimc_bids.core.simulate.montecarlo import crossing_probabilities, simulate
from dmrimc_bids.core.waveforms import B_TO_MS_PER_UM2, pgse, sampled, trse

from .substrates import from_polygons, regular_polygon



def group_signals(phase, groups, meas_wave, b):
    """Signals [n_groups, M, 2] of arbitrary walker groups (groups[i] = -1 drops walker i), from the walkers'
    phases: compartment-wise signals."""
    groups = np.asarray(groups)
    ng = int(groups.max()) + 1
    out = np.ones((ng, len(b), 2))
    sb = np.sqrt(np.asarray(b, float) * B_TO_MS_PER_UM2)
    for g in range(ng):
        ph = phase[groups == g]
        for m, w in enumerate(meas_wave):
            if w >= 0 and len(ph):
                out[g, m] = np.abs(np.exp(-1j * sb[m] * ph[:, w, :]).mean(0))
    return out


def signal_se(e, n, axes=2):
    """Standard error of |<cos φ>| for Gaussian phases: Var cos φ = (1 + E⁴)/2 - E² per axis."""
    e = np.asarray(e, float)
    return np.sqrt(np.maximum((1 + e ** 4) / 2 - e ** 2, 0) / (n * axes))


def disc_starts(rng, centres, radius, n):
    """n uniform start positions inside each disc (radius shrunk so every start is inside the polygon)."""
    out = []
    for cx, cy in centres:
        r = 0.995 * radius * np.sqrt(rng.random(n))
        t = 2 * np.pi * rng.random(n)
        out.append(np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1))
    return np.concatenate(out)


def area_matched(radius, n):
    return radius * math.sqrt((2 * math.pi / n) / math.sin(2 * math.pi / n))


def karger(b, t, f1, d1, d2, k1):
    """Kärger (1985) two-pool exchange signal; b in s/mm², t in ms, D in µm²/ms, k1 in 1/ms."""
    b = np.asarray(b, float) * 1e-3
    q2 = np.maximum(b, 1e-12) / t
    k2 = f1 * k1 / (1 - f1)
    a = d1 + d2 + (k1 + k2) / q2
    root = np.sqrt((d2 - d1 + (k2 - k1) / q2) ** 2 + 4 * k1 * k2 / q2 ** 2)
    d1p, d2p = 0.5 * (a - root), 0.5 * (a + root)
    p2 = (f1 * d1 + (1 - f1) * d2 - d1p) / (d2p - d1p)
    return (1 - p2) * np.exp(-b * d1p) + p2 * np.exp(-b * d2p)


@pytest.mark.slow
def test_free_diffusion_any_waveform_gives_exp_minus_bd():
    """No membranes: E = exp(-bD) for PGSE, TRSE and a sampled waveform; tolerance 4 SE."""
    waves = [None, pgse(10, 20), pgse(10, 20), pgse(4, 40), trse(8.9, 17.6, 20.4, 6.0, 17.4, 63.9)]
    t = (np.arange(3000) + 0.5) * 0.01
    waves.append(sampled(np.sin(2 * np.pi * t / 15.0) * (t < 30), 0.01))  # oscillating gradient
    b = np.array([0, 500, 1500, 1000, 800, 600.0])
    prot = Protocol(b, 10.0, 20.0, extra={"waveforms": waves})
    n, d = 20000, 2.0
    r = simulate(from_polygons([], (40.0, 40.0)), prot, d, d, 0.0, n_walkers=n, dt_ms=0.02, seed=11)
    expect = np.exp(-b * 1e-3 * d)
    assert r.signals[0, 0] == 1.0
    assert np.all(np.abs(r.signals[0] - expect) <= 4 * signal_se(expect, n) + 1e-12), (r.signals, expect)


@pytest.mark.slow
def test_impermeable_cylinders_match_the_gaussian_phase_approximation():
    """Discs R = 3, 5, 8 µm (κ = 0), D = 1 µm²/ms, (δ, Δ) = (10, 20), (20, 40) ms vs the GPA
    (van Gelderen 1994): tolerance 4 SE + 0.006, the GPA's own error at these timings
    (0.0014 at δ = 30, up to 0.011 at δ = 1 ms)."""
    radii, n_ang, n = (3.0, 5.0, 8.0), 512, 12000
    centres = [(10.0, 10.0), (30.0, 10.0), (50.0, 10.0)]
    cells = [regular_polygon(cx, cy, area_matched(r, n_ang), n_ang) for (cx, cy), r in zip(centres, radii)]
    sub = from_polygons(cells, (60.0, 20.0))
    b = np.array([500, 1000, 2000, 500, 1000, 2000.0])
    prot = Protocol(b, [10, 10, 10, 20, 20, 20], [20, 20, 20, 40, 40, 40])
    rng = np.random.default_rng(0)
    starts = np.concatenate([disc_starts(rng, [c], r, n) for c, r in zip(centres, radii)])
    res = simulate(sub, prot, 1.0, 1.0, 0.0, start_xy=starts, dt_ms=0.03, seed=5, keep_walkers=True)
    lab = res.walkers["label"]
    assert np.array_equal(lab[:, 0], lab[:, 1]) and np.array_equal(lab[:, 0], np.repeat([0, 1, 2], n))
    sig = group_signals(res.walkers["phase"], lab[:, 0], res.walkers["meas_wave"], b).mean(-1)
    for k, r in enumerate(radii):
        gpa = restricted_signal(b, r, 1.0, prot.small_delta_ms, prot.big_delta_ms, "cylinder")
        assert np.all(np.abs(sig[k] - gpa) <= 4 * signal_se(gpa, n) + 0.006), (r, sig[k], gpa)


@pytest.mark.slow
def test_cylinder_matches_the_exact_matrix_formalism():
    """R = 5 µm, D = 2 µm²/ms, δ = 30, Δ = 40 ms, b = 1000/2000/3000 s/mm²: MISST 0.9565/0.9159/0.8763
    (disimpy's stored references); tolerance 4 SE + 0.002 (finite step ℓ/R = 0.07)."""
    n = 20000
    sub = from_polygons([regular_polygon(10, 10, area_matched(5.0, 512), 512)], (20.0, 20.0))
    starts = disc_starts(np.random.default_rng(1), [(10.0, 10.0)], 5.0, n)
    b = np.array([1000, 2000, 3000.0])
    r = simulate(sub, Protocol(b, 30.0, 40.0), 2.0, 2.0, 0.0, start_xy=starts, dt_ms=0.025, seed=2)
    misst = np.array([0.9565, 0.9159, 0.8763])
    assert np.all(np.abs(r.signals[0] - misst) <= 4 * signal_se(misst, n) + 0.002), r.signals


def test_parallel_plates_match_the_gpa():
    """A 10-µm slab (plates 2R apart, R = 5): the gradient across it (x) follows the GPA for planes."""
    n = 12000
    sub = from_polygons([np.array([[5.0, 0], [15.0, 0], [15.0, 200], [5.0, 200]])], (20.0, 200.0))
    rng = np.random.default_rng(3)
    starts = np.stack([5 + 10 * rng.random(n), 50 + 100 * rng.random(n)], 1)
    b = np.array([500, 1000, 2000, 1000.0])
    prot = Protocol(b, [10, 10, 10, 20], [20, 20, 20, 40])
    r = simulate(sub, prot, 1.0, 1.0, 0.0, start_xy=starts, dt_ms=0.03, seed=4)
    gpa = restricted_signal(b, 5.0, 1.0, prot.small_delta_ms, prot.big_delta_ms, "planes")
    sx = r.signals_xy[0, :, 0]
    assert np.all(np.abs(sx - gpa) <= 4 * signal_se(gpa, n, axes=1) + 0.006), (sx, gpa)
    free = np.exp(-b * 1e-3)
    sy = r.signals_xy[0, :, 1]  # along the slab: free (walls 50 µm away)
    assert np.all(np.abs(sy - free) <= 4 * signal_se(free, n, axes=1)), (sy, free)


def _packing(spacing=6.0, radius=2.0, n=5, n_ang=64):
    cells = [regular_polygon(spacing * (i + 0.5), spacing * (j + 0.5), radius, n_ang)
             for i in range(n) for j in range(n)]
    return from_polygons(cells, (spacing * n, spacing * n))


def _compartment(sub, xy):
    tree = shapely.STRtree(sub.cells)
    lab = -np.ones(len(xy), int)
    pairs = tree.query(shapely.points(xy), predicate="within")
    lab[pairs[0]] = pairs[1]
    return lab


def test_no_leaks_and_kappa_to_zero_equals_impermeable():
    """κ = 0: no walker changes compartment and every label equals the geometry at the end; a vanishing κ
    (1e-3 µm/s) gives the impermeable signal within 4 SE (independent seeds)."""
    sub = _packing()
    prot = Protocol([0, 1000, 2000, 3000], 10.0, 30.0)
    n = 20000
    r0 = simulate(sub, prot, 1.5, 2.5, 0.0, n_walkers=n, seed=1, keep_walkers=True)
    lab = r0.walkers["label"]
    assert np.array_equal(lab[:, 0], lab[:, 1])
    assert np.array_equal(_compartment(sub, r0.walkers["disp"][:, 2:]), lab[:, 1])
    assert r0.cut_steps == 0
    r1 = simulate(sub, prot, 1.5, 2.5, 1e-3, n_walkers=n, seed=2)
    assert np.all(np.abs(r1.signals - r0.signals) <= 4 * np.sqrt(2) * signal_se(r0.signals, n))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*crossing probability")  # κ = 400 µm/s stresses the rule on purpose
def test_permeable_equilibrium_keeps_the_intra_fraction():
    """Uniform start, κ = 400 µm/s (10x Histo-μSim's largest), D_in ≠ D_ex: the intra-cellular fraction
    stays the area fraction (detailed balance) within 4 binomial SE, and labels match the geometry."""
    sub = _packing()
    fa = sum(c.area for c in sub.cells) / (sub.tile_um[0] * sub.tile_um[1])
    n = 20000
    r = simulate(sub, Protocol([0, 1000], 10.0, 100.0), 0.8, 3.0, 400.0, n_walkers=n, seed=3,
                 keep_walkers=True)
    lab = r.walkers["label"]
    se = math.sqrt(fa * (1 - fa) / n)
    assert abs((lab[:, 0] >= 0).mean() - fa) <= 4 * se
    assert abs((lab[:, 1] >= 0).mean() - fa) <= 4 * se
    assert (lab[:, 0] != lab[:, 1]).mean() > 0.3  # walkers did exchange
    assert np.array_equal(_compartment(sub, r.walkers["disp"][:, 2:]) >= 0, lab[:, 1] >= 0)


@pytest.mark.slow
@pytest.mark.parametrize("a1,a2,d1,d2,kappa", [(2.0, 2.0, 1.0, 1.0, 100.0), (2.0, 3.0, 0.8, 2.5, 50.0)])
def test_stacked_permeable_layers_reach_the_series_resistance_limit(a1, a2, d1, d2, kappa):
    """Periodic layers: (a1 + a2)/D∞ = a1/D1 + a2/D2 + 2/κ (Crick 1970; Tanner 1978), from the mean
    squared displacement across the layers at t = 400 ms (>> a²/D, a/κ). Tolerance 4 SE of a
    mean square (SE = sqrt(2/N) relative) + 1.5 % for the remaining O(1/t) approach to the limit."""
    ly = 20.0
    sub = from_polygons([np.array([[0.5, 0], [0.5 + a1, 0], [0.5 + a1, ly], [0.5, ly]])], (a1 + a2, ly))
    n = 10000
    r = simulate(sub, Protocol([0, 100], 10.0, 390.0), d1, d2, kappa, n_walkers=n, dt_ms=0.05, seed=6,
                 keep_walkers=True)
    t = r.n_steps * r.dt_ms
    d_t = np.mean(r.walkers["disp"][:, 0] ** 2) / (2 * t)
    d_inf = (a1 + a2) / (a1 / d1 + a2 / d2 + 2 / (kappa * 1e-3))
    assert abs(d_t / d_inf - 1) <= 4 * math.sqrt(2 / n) + 0.015, (d_t, d_inf)


@pytest.mark.slow
def test_exchange_between_layers_follows_the_karger_model():
    """Thin layers (1 µm, barrier-limited: κa/D = 0.03) with D1 = 0.8, D2 = 2.5 µm²/ms: along the
    layers each pool is Gaussian and the exchange is first order, the regime where Kärger's model holds
    (k1 = 2κ/a1). The two-state populations follow exp(-(k1+k2)t) within 4 binomial SE, and the signal
    along the layers matches Kärger within 4 SE + 0.003 (finite δ = 2 ms against the narrow-pulse model)."""
    a1 = a2 = 1.0
    d1, d2, kappa = 0.8, 2.5, 25.0
    ly = 2000.0
    sub = from_polygons([np.array([[0.25, 0], [0.25 + a1, 0], [0.25 + a1, ly], [0.25, ly]])], (a1 + a2, ly))
    b = np.array([0, 250, 500, 1000, 2000.0])
    delta_big = 20.0
    n = 30000
    r = simulate(sub, Protocol(b, 2.0, delta_big), d1, d2, kappa, n_walkers=n, dt_ms=0.01, seed=9,
                 keep_walkers=True)
    k1 = 2 * kappa * 1e-3 / a1
    f1 = a1 / (a1 + a2)
    lab = r.walkers["label"]
    start_in = lab[:, 0] >= 0
    p11 = f1 + (1 - f1) * np.exp(-(k1 + k1 * f1 / (1 - f1)) * r.n_steps * r.dt_ms)
    assert abs((lab[start_in, 1] >= 0).mean() - p11) <= 4 * math.sqrt(p11 * (1 - p11) / start_in.sum())
    expect = karger(b, delta_big - 2.0 / 3, f1, d1, d2, k1)
    sy = r.signals_xy[0, :, 1]
    assert np.all(np.abs(sy - expect) <= 4 * signal_se(expect, n, axes=1) + 0.003), (sy, expect)
    no_exchange = karger(b, delta_big - 2.0 / 3, f1, d1, d2, 0.0)
    assert np.all(sy[2:] < no_exchange[2:] - 0.01)  # exchange is visible


def test_crossing_probability_matches_the_histo_usim_table():
    """Raw p = (2/3)κℓ/D at κ = 40 µm/s, dt = 110/2370 ms: 0.0157 (D 0.8) and 0.0081 (D 3.0)
    (the Histo-μSim paper and code, citations: histousim), before the finite-step normalisation 1 + (p_ie + p_ei)/2."""
    dt = 110 / 2370
    p_ie, p_ei = crossing_probabilities(0.8, 3.0, 40.0, dt)
    norm = 1 + (0.0157 + 0.0081) / 2
    assert p_ie * norm == pytest.approx(0.0157, abs=1e-4) and p_ei * norm == pytest.approx(0.0081, abs=1e-4)


def test_runs_are_deterministic_and_independent_of_batching():
    sub = _packing(n=3)
    prot = Protocol([0, 1000, 2500], [10, 10, 20], [20, 20, 40])
    kw = dict(n_walkers=500, seed=42, keep_walkers=False)
    a = simulate(sub, prot, [1.0, 2.0], [2.0, 2.0], [0.0, 20.0], **kw)
    b = simulate(sub, prot, [1.0, 2.0], [2.0, 2.0], [0.0, 20.0], batch_walkers=500, **kw)
    c = simulate(sub, prot, [1.0, 2.0], [2.0, 2.0], [0.0, 20.0], **{**kw, "seed": 43})
    assert np.array_equal(a.signals, b.signals)
    assert not np.array_equal(a.signals, c.signals)
    assert a.walker_steps == 2 * 500 * a.n_steps


GPU_SCRIPT = r"""
import numpy as np
from dmrimc_bids.core.protocol import Protocol
from dmrimc_bids.core.simulate.montecarlo import simulate
from tests.substrates import from_polygons, regular_polygon
cells = [regular_polygon(6 * i + 3, 3, 2.0, 24) for i in range(3)]
sub = from_polygons(cells, (18.0, 6.0))
prot = Protocol([0, 1000, 2000], [5, 5, 3], [8, 8, 6])
kw = dict(n_walkers=24, seed=3, dt_ms=0.2, keep_walkers=True)
a = simulate(sub, prot, [1.0, 2.0], [2.0, 1.0], [0.0, 300.0], device="cpu", **kw)
b = simulate(sub, prot, [1.0, 2.0], [2.0, 1.0], [0.0, 300.0], device="gpu", **kw)
assert np.array_equal(a.walkers["label"], b.walkers["label"])
assert np.abs(a.walkers["phase"] - b.walkers["phase"]).max() < 1e-9
assert np.abs(a.signals - b.signals).max() < 1e-9
assert (a.walkers["label"][:, 0] != a.walkers["label"][:, 1]).any()
print("OK", b.device)
"""


@pytest.mark.slow
def test_gpu_walk_matches_cpu_in_the_cuda_simulator():
    """The CUDA kernel runs the same walk (numba's CUDA simulator: no GPU needed)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    res = subprocess.run([sys.executable, "-c", GPU_SCRIPT], capture_output=True, text=True, env=env, timeout=600,
                         cwd=Path(__file__).resolve().parents[1])  # the repository root: tests.substrates
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK gpu" in res.stdout


def test_step_conditions_are_checked():
    sub = _packing(radius=0.6)
    with pytest.warns(UserWarning, match="small cells' radius"):
        simulate(sub, Protocol([0, 1000], 5.0, 10.0), 3.0, 3.0, 0.0, n_walkers=10, dt_ms=0.1)
    with pytest.warns(UserWarning, match="crossing probability"):
        simulate(sub, Protocol([0, 1000], 5.0, 10.0), 0.1, 0.1, 5000.0, n_walkers=10, dt_ms=0.1)
