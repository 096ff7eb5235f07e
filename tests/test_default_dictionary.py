"""The default dictionary's machinery: diffusion-time scaling, the tissue generator, the timing grid."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dmrimc_bids.core.dictionary import Dictionary, TimingGrid
from dmrimc_bids.core.protocol import Protocol
from dmrimc_bids.core.simulate import montecarlo, scaled
from dmrimc_bids.core.simulate.generate import tissue_packing
from .substrates import from_polygons, regular_polygon

PROTO = Protocol([0, 400, 1000, 1500, 400, 1000, 1500], [10.0, 8.0, 12.0, 15.0, 8.0, 12.0, 15.0],
                 [20.0, 20.0, 25.0, 30.0, 40.0, 45.0, 50.0])


def _disks():
    """Four impermeable/permeable discs (radius 4 µm) in a 20 µm periodic tile."""
    polys = [regular_polygon(cx, cy, 4.0, 64) for cx in (5.0, 15.0) for cy in (5.0, 15.0)]
    return from_polygons(polys, (20.0, 20.0), name="discs")


def _mc_sd(signal, n):
    """Monte Carlo standard deviation of a magnitude-averaged signal of n walkers."""
    return np.sqrt(np.maximum(1 - np.asarray(signal) ** 2, 1e-4) / n)


def test_scaled_protocol_multiplies_b_and_timings():
    p = scaled.scaled_protocol(PROTO, [1.0, 2.5])
    assert len(p) == 2 * len(PROTO)
    np.testing.assert_allclose(p.b[len(PROTO):], 2.5 * PROTO.b)
    np.testing.assert_allclose(p.small_delta_ms[len(PROTO):], 2.5 * PROTO.small_delta_ms)
    np.testing.assert_allclose(p.big_delta_ms[len(PROTO):], 2.5 * PROTO.big_delta_ms)


def test_permeable_walk_at_unit_diffusivity_equals_direct_walk():
    """One walk at (1, r, κ/D0in) reproduces direct walks at (D0in, r·D0in, κ) for two D0in."""
    sub = _disks()
    n = 6000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = scaled.permeable_signals(sub, PROTO, [0.9, 2.4], 0.75, 10.0, n_walkers=n, seed=3)
        direct = montecarlo.simulate(sub, PROTO, [0.9, 2.4], [0.675, 1.8], [9.0, 24.0], n_walkers=n, seed=11,
                                     dt_ms=scaled.dt_for_step(scaled.DEFAULT_STEP_UM, 2.4)).signals
    tol = 5 * np.hypot(_mc_sd(direct, n), _mc_sd(got, n)) + 2e-3
    assert np.all(np.abs(got - direct) < tol), np.abs(got - direct).max()
    assert np.abs(got[0] - got[1]).max() > 0.05  # the two diffusivities differ: the test can fail


def test_impermeable_compartments_combine_to_any_diffusivity_pair():
    """w·S_in(D0in) + (1-w)·S_ex(D0ex) from unit-diffusivity walks equals a direct κ = 0 walk."""
    sub = _disks()
    n = 8000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s_in, s_ex = scaled.impermeable_signals(sub, PROTO, [1.2, 2.8], n_walkers=n, seed=5)
        direct = montecarlo.simulate(sub, PROTO, 2.8, 1.2, 0.0, n_walkers=n, seed=9,
                                     dt_ms=scaled.dt_for_step(scaled.DEFAULT_STEP_UM, 2.8)).signals[0]
    w = sub.metrics("polygon")["fin"]
    assert w == pytest.approx(4 * 16 * np.pi / 400, rel=0.01)
    combined = w * s_in[1] + (1 - w) * s_ex[0]
    assert np.all(np.abs(combined - direct) < 5 * _mc_sd(direct, n / 2) + 2e-3)
    swapped = w * s_in[0] + (1 - w) * s_ex[1]
    assert np.abs(swapped - direct).max() > 0.05


def test_substrate_entries_follow_the_design():
    sub = _disks()
    design = {"d0": [1.0, 2.0, 3.0], "ratios": [0.5, 1.0], "kappa_per_d0": [10.0], "kappa_max": 25.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sig, cfg = scaled.substrate_entries(sub, PROTO, design, n_walkers=400, seed=1)
    assert sig.shape == (len(cfg), len(PROTO))
    # κ = 0: every pair; ratio 0.5 keeps D0in 2 and 3 (D0ex 1, 1.5) but κ = 30 > 25 drops D0in 3;
    # ratio 1 keeps D0in 1 and 2
    assert len(cfg) == 9 + 1 + 2
    assert {tuple(c) for c in cfg[9:]} == {(2.0, 1.0, 20.0), (1.0, 1.0, 10.0), (2.0, 2.0, 20.0)}
    assert np.all(sig[:, 0] == 1.0) and np.all((sig[:, 1:] > 0) & (sig[:, 1:] < 1))


@pytest.mark.parametrize("fin", [0.05, 0.5, 0.88])
def test_tissue_packing_reaches_its_fraction_and_is_deterministic(fin):
    import shapely
    a = tissue_packing(fin=fin, mean_cs_um=10.0, clustering=0.6, elongation=1.3, n_cells=60, seed=2)
    b = tissue_packing(fin=fin, mean_cs_um=10.0, clustering=0.6, elongation=1.3, n_cells=60, seed=2)
    assert a.checksum() == b.checksum()
    m = a.metrics()
    assert m["fin"] == pytest.approx(fin, abs=0.05 + 0.05 * fin)
    pairs = shapely.STRtree(a.cells).query(np.array(a.cells, dtype=object), predicate="intersects")
    assert np.all(pairs[0] == pairs[1])  # disjoint cells


def test_tissue_packing_clustering_and_size_knobs_act():
    import shapely
    spread = tissue_packing(fin=0.3, mean_cs_um=8.0, clustering=0.0, n_cells=80, seed=4)
    nests = tissue_packing(fin=0.3, mean_cs_um=8.0, clustering=1.0, n_cells=80, seed=4)

    def stroma_depth(sub):
        """90th percentile of the distance [µm] from extra-cellular points to the nearest cell."""
        union = shapely.union_all(sub.cells)
        pts = np.random.default_rng(0).random((3000, 2)) * sub.tile_um
        d = shapely.distance(union, shapely.points(pts))
        return np.percentile(d[d > 0], 90)
    assert stroma_depth(nests) > 1.3 * stroma_depth(spread)
    big = tissue_packing(fin=0.3, mean_cs_um=16.0, n_cells=80, seed=4).metrics()
    assert big["vCS_cyl"] > 1.5 * spread.metrics()["vCS_cyl"]


def _analytic_signals(grid_or_proto):
    """Impermeable cylinders + hindered medium (core.analytic) for three microstructures."""
    from dmrimc_bids.core.analytic import two_compartment_signal
    p = grid_or_proto
    return two_compartment_signal(p.b, p.small_delta_ms, p.big_delta_ms, [0.3, 0.6, 0.8], [8.0, 12.0, 18.0],
                                  [1.0, 2.0, 3.0], [2.5, 1.5, 0.9])


def test_timing_grid_interpolation_is_accurate_off_the_nodes():
    from dmrimc_bids.core.dictionary_default import DEFAULT_TIMING_GRID as grid
    on_grid = _analytic_signals(grid.protocol())
    rng = np.random.default_rng(0)
    sd = rng.uniform(3.0, 38.0, 200)
    bd = sd + rng.uniform(1.0, 55.0, 200)
    b = rng.uniform(200.0, 2900.0, 200)
    target = Protocol(b, sd, bd)
    got = grid.interpolate(on_grid, b, sd, bd)
    want = _analytic_signals(target)
    err = np.abs(got - want)
    assert err.max() < 0.01 and np.median(err) < 0.002
    # nearest-node matching (what a grid without interpolation gives) is much worse
    nodes = grid.protocol()
    near = [np.argmin(((nodes.b - x) / 100) ** 2 + (nodes.small_delta_ms - s) ** 2 + (nodes.big_delta_ms - d) ** 2)
            for x, s, d in zip(b, sd, bd)]
    assert np.median(np.abs(on_grid[:, near] - want)) > 3 * np.median(err)


def test_dictionary_match_interpolates_on_a_timing_grid_and_refuses_outside():
    from dmrimc_bids.core.errors import InputError
    grid = TimingGrid([5.0, 10.0, 15.0, 20.0], [0.0, 5.0, 10.0, 20.0, 30.0], [250.0, 500.0, 1000.0, 1500.0, 2000.0])
    proto = grid.protocol()
    sig = _analytic_signals(proto).astype(np.float32)
    dic = Dictionary(sig, np.eye(3), ["a", "b", "c"], proto, provenance={"timing_grid": grid.describe()})
    meas = Protocol([0, 700, 1500], [7.0, 7.0, 15.0], [7.0 + 5, 20.0, 40.0])
    m = dic.match(meas)
    assert m.provenance["matching"]["method"].startswith("interpolated")
    np.testing.assert_allclose(m.signals[:, 0], 1.0)
    np.testing.assert_allclose(m.signals[:, 1:], _analytic_signals(meas)[:, 1:], atol=0.02)
    with pytest.raises(InputError):  # δ 40 ms is outside the grid and no node is within tolerance
        dic.match(Protocol([1000.0], [40.0], [60.0]))


def test_estimate_placement_counts_nodes_and_bounds():
    from dmrimc_bids.core.fitting.dictfit import estimate_placement
    proto = Protocol([1000.0], [10.0], [30.0])
    grid = np.array([[a, b] for a in (0.0, 0.5, 1.0) for b in (1.0, 2.0, 3.0)])
    dic = Dictionary(np.ones((9, 1), np.float32), grid, ["x", "y"], proto)
    est = np.array([[0.5, 2.0], [0.25, 2.5], [1.0, 1.7], [0.5000001, 2.9999999]])
    got = estimate_placement(est, dic, ["x", "y"], np.array([0.0, 1.0]), np.array([1.0, 3.0]))
    assert {k: got["x"][k] for k in ("on_node", "at_bound", "n")} == {"on_node": 0.75, "at_bound": 0.25, "n": 4}
    assert {k: got["y"][k] for k in ("on_node", "at_bound", "n")} == {"on_node": 0.5, "at_bound": 0.25, "n": 4}
    assert got["x"]["on_node_chance"] < 0.06   # three nodes cover 0.2 % of the range: few by chance


def test_estimate_placement_chance_share_matches_continuous_estimates():
    """Dense nodes (200 values on [0, 1]) cover 40 % of the range within 0.1 % of it: continuous estimates land
    on a node that often by chance, and the chance share says so; estimates pinned to nodes exceed it."""
    from dmrimc_bids.core.fitting.dictfit import estimate_placement
    rng = np.random.default_rng(3)
    nodes = np.sort(rng.uniform(0, 1, 200))
    dic = Dictionary(np.ones((200, 1), np.float32), nodes[:, None], ["x"], Protocol([1000.0], [10.0], [30.0]))
    lo, hi = np.array([0.0]), np.array([1.0])
    spread = estimate_placement(rng.beta(2, 3, (20000, 1)), dic, ["x"], lo, hi)["x"]
    assert spread["on_node"] == pytest.approx(spread["on_node_chance"], abs=0.015) and spread["on_node"] > 0.3
    pinned = estimate_placement(np.where(rng.uniform(size=(20000, 1)) < 0.5, rng.choice(nodes, (20000, 1)),
                                         rng.uniform(0, 1, (20000, 1))), dic, ["x"], lo, hi)["x"]
    assert pinned["on_node"] - pinned["on_node_chance"] > 0.25


def test_recipe_v2_holds_v1s_substrates_low_b_and_higher_kappa():
    """v2 (issue #32) doubles the population with v1's substrates first (Sobol: one sequence), reaches
    b = 25 s/mm² on the same (δ, Δ) grid, and its permeable walks reach κ = 70 µm/s, above the published
    substrates' 40; the shipped dictionary was built with the shipped recipe."""
    from dmrimc_bids.core import dictionary_default as dd
    v1, v2 = dd.RECIPES["v1"], dd.RECIPES["v2"]
    assert dd.default_substrate_specs(v2.n_substrates)[:v1.n_substrates] == dd.default_substrate_specs(v1.n_substrates)
    assert v2.timing_grid.b.min() <= 25 < v1.timing_grid.b.min() and set(v1.timing_grid.b) <= set(v2.timing_grid.b)
    np.testing.assert_array_equal(v2.timing_grid.small_delta, v1.timing_grid.small_delta)
    d0 = np.array(v2.design["d0"])
    reach = max(k * d for k in v2.design["kappa_per_d0"] for d in d0 if k * d <= v2.design["kappa_max"])
    assert reach >= 60 > v1.design["kappa_max"]
    shipped = dd.default_dictionary()
    assert shipped.provenance["timing_grid"] == dd.RECIPES[dd.SHIPPED_RECIPE].timing_grid.describe()
