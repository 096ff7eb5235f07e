"""Capillary-flow simulator (core/simulate/flow): resistance, Kirchhoff solve, spins, metrics."""

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from dmrimc_bids.core.errors import InputError
from dmrimc_bids.core.simulate.flow.metrics import network_metrics, path_counts
from dmrimc_bids.core.simulate.flow.network import Network, read_network
from dmrimc_bids.core.simulate.flow.resolve import relative_viscosity, segment_resistance, solve_flow
from dmrimc_bids.core.simulate.flow.spins import simulate_flow
from dmrimc_bids.core.waveforms import B_TO_MS_PER_UM2, pgse, trse

SFS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "spinflowsim"
needs_sfs = pytest.mark.skipif(not SFS.is_dir(), reason="SpinFlowSim reference networks (../shared) absent")


def test_blinder_viscosity_and_resistance():
    # values of μ_rel tabulated in the SpinFlowSim paper and code, citations: spinflowsim
    np.testing.assert_allclose(relative_viscosity([1, 2, 2.5, 3, 5, 10, 100]),
                               [7.15, 1.37, 1.19, 1.22, 1.57, 2.29, 4.00], atol=6e-3)
    # Poiseuille limit: R = 8 μ L / (π r⁴) · μ_rel
    r, L = 4.0, 50.0
    assert segment_resistance(r, L) == pytest.approx(relative_viscosity(r) * 8 * 1.2e-3 * L / (np.pi * r ** 4))


def ladder(radii=(3.0, 5.0), length=1e5, qin=1e-3):
    """Parallel straight pipes joining the same two nodes (a multigraph), along x."""
    nodes = [[0, 0, 0], [length, 0, 0]]
    return Network(nodes, [[0, 1]] * len(radii), radii, 0, 1, qin * 1e9, "ladder")


def test_parallel_and_series_flow_split():
    net = ladder((3.0, 5.0, 8.0))
    sol = solve_flow(net)
    g = 1 / segment_resistance(net.radius_um, net.length_um)
    np.testing.assert_allclose(sol.flow_um3_per_s, net.qin_um3_per_s * g / g.sum(), rtol=1e-12)
    assert sol.kcl_residual < 1e-12
    # series chain with a dead-end branch: the branch carries exactly zero flow
    chain = Network([[0, 0, 0], [50, 0, 0], [100, 0, 0], [50, 40, 0]], [[0, 1], [1, 2], [1, 3]], [3, 3, 2], 0, 2, 1e5)
    s = solve_flow(chain)
    np.testing.assert_allclose(s.flow_um3_per_s[:2], 1e5, rtol=1e-14)
    assert s.flow_um3_per_s[2] == 0.0 and list(s.live) == [True, True, False]
    assert s.pressure_pa[0] == pytest.approx(1e5 * s.resistance[:2].sum(), rel=1e-12)


def test_bad_networks_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="not connected"):
        solve_flow(Network([[0, 0, 0], [1, 0, 0], [5, 0, 0], [6, 0, 0]], [[0, 1], [2, 3]], [3, 3], 0, 3, 1.0))
    bad = tmp_path / "net.json"
    bad.write_text('{"nodes": [[0, 0, 0, 0]], "segments": []}')
    with pytest.raises(InputError, match="bad network description"):
        read_network(bad)
    with pytest.raises(InputError, match="inlet and outlet"):
        p = tmp_path / "net.csv"
        p.write_text("node_a,node_b,radius_um,x_a,y_a,z_a,x_b,y_b,z_b\n0,1,3,0,0,0,10,0,0\n")
        read_network(p)


def test_json_and_csv_round_trip(tmp_path):
    net = Network([[0, 0, 0], [40, 0, 0], [40, 30, 0], [80, 30, 0]], [[0, 1], [1, 2], [0, 2], [2, 3]],
                  [3, 4, 2.5, 3.5], 0, 3, 2e6, "toy")
    import json
    (tmp_path / "n.json").write_text(json.dumps(net.to_json()))
    back = read_network(tmp_path / "n.json")
    np.testing.assert_array_equal(back.segments, net.segments)
    rows = ["node_a,node_b,radius_um,x_a,y_a,z_a,x_b,y_b,z_b"]
    for (a, b), r in zip(net.segments, net.radius_um):
        rows.append(",".join(map(str, [a, b, r, *net.nodes[a], *net.nodes[b]])))
    (tmp_path / "n.csv").write_text("\n".join(rows) + "\n")
    csvnet = read_network(tmp_path / "n.csv", inlet=0, outlet=3, qin_mm3_per_s=2e-3)
    np.testing.assert_allclose(solve_flow(csvnet).flow_um3_per_s, solve_flow(net).flow_um3_per_s, rtol=1e-12)


def _spice_problem() -> str:
    """'' when the spice backend runs here, else what is missing (PySpice, or the ngspice library), as the
    backend's own error says it."""
    try:
        solve_flow(ladder(), backend="spice")
        return ""
    except (InputError, ImportError, OSError) as exc:
        return str(exc)


SPICE_PROBLEM = _spice_problem()


@pytest.mark.skipif(not os.environ.get("DMRIMC_REQUIRE_SPICE") and bool(SPICE_PROBLEM),
                    reason=f"spice backend unavailable: {SPICE_PROBLEM} (CI sets DMRIMC_REQUIRE_SPICE=1)")
def test_spice_backend_agrees():
    nets = [ladder((3.0, 5.0, 8.0)),
            Network([[0, 0, 0], [40, 0, 0], [40, 30, 0], [80, 30, 0], [90, 0, 0]],
                    [[0, 1], [1, 2], [0, 2], [2, 3], [1, 4], [4, 3]], [3, 4, 2.5, 3.5, 1.6, 6], 0, 3, 2e6)]
    if SFS.is_dir():
        nets += [read_network(p) for p in sorted(SFS.glob("networks*/Net*/*.npz"))[::150]]
    for net in nets:
        a, b = solve_flow(net), solve_flow(net, backend="spice")
        scale = np.max(np.abs(a.flow_um3_per_s))
        assert np.max(np.abs(a.flow_um3_per_s - b.flow_um3_per_s)) <= 1e-9 * scale
        np.testing.assert_allclose(b.pressure_pa, a.pressure_pa, rtol=1e-9, atol=1e-9 * a.pressure_pa.max())


def test_two_populations_pgse_signal_is_analytic():
    """Two parallel pipes along x, too long to reach the outlet: two velocity populations, weights ∝ r²."""
    net = ladder((3.0, 5.0), length=1e6, qin=2e-3)
    sol = solve_flow(net)
    v = sol.velocity_um_per_s * 1e-3  # µm/ms
    w = net.radius_um ** 2 / np.sum(net.radius_um ** 2)
    sd, bd = 10.0, 30.0
    wave = pgse(sd, bd)
    b = np.array([0, 10, 40, 100, 200])
    sim = simulate_flow(sol, b, [wave] * 5, n_spins=20000, seed=3, directions=[[1, 0, 0]])
    phase = np.sqrt(b[:, None] * B_TO_MS_PER_UM2) * wave.phase_scale() * (-v[None, :] * sd * bd)
    expect = np.abs(np.sum(w * np.exp(1j * phase), axis=1))
    np.testing.assert_allclose(sim.signals, expect, atol=1e-3)
    assert sim.signals[-1] < 0.95  # the test is sensitive
    # a direction orthogonal to the flow sees no phase
    ortho = simulate_flow(sol, b, [wave] * 5, n_spins=2000, seed=3, directions=[[0, 1, 0]])
    np.testing.assert_allclose(ortho.signals, 1.0, atol=1e-12)


def test_periodic_copy_keeps_trajectories_continuous():
    """One pipe, many transits through the outlet: all spins move identically, so |S| = 1 and ANB = vT/L."""
    net = Network([[0, 0, 0], [30, 40, 0]], [[0, 1]], [4.0], 0, 1, 5e-4 * 1e9)
    sol = solve_flow(net)
    wave = pgse(20, 50)  # refocused (a TRSE with δ1+δ2 != δ3+δ4 would dephase the initial positions)
    sim = simulate_flow(sol, [0, 100, 400], [None, wave, wave], n_spins=3000, seed=1)
    np.testing.assert_allclose(sim.signals, 1.0, atol=1e-9)
    v = sol.velocity_um_per_s[0] * 1e-3
    assert v * 100 / 50 > 5  # many transits in 100 ms
    assert sim.anb == pytest.approx(v * 100 / 50, abs=2e-3 * v * 100 / 50 + 1 / 3000)


def test_simulation_is_deterministic_and_thread_independent():
    import numba
    net = Network([[0, 0, 0], [40, 0, 0], [40, 30, 0], [80, 30, 0], [90, 0, 0]],
                  [[0, 1], [1, 2], [0, 2], [2, 3], [1, 4], [4, 3]], [3, 4, 2.5, 3.5, 1.6, 6], 0, 3, 1e6)
    sol = solve_flow(net)
    args = (sol, [0, 50, 100], [None, pgse(10, 30), pgse(10, 30)])
    a = simulate_flow(*args, n_spins=500, seed=5)
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        b = simulate_flow(*args, n_spins=500, seed=5)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(a.signals, b.signals)
    assert not np.array_equal(a.signals, simulate_flow(*args, n_spins=500, seed=6).signals)


def _reference_rows(step):
    rows = list(csv.DictReader(open(SFS / "reference_arrays" / "row_to_realisation.csv")))
    return [r for r in rows[::step] if r["net"] != "4" and (SFS / "reference_arrays" / f"Net{r['net']}").is_dir()]


@needs_sfs
def test_reference_flows_paths_and_metrics():
    files = sorted(SFS.glob("networks*/Net*/*.npz"))[::7]
    for f in files:
        z = np.load(f)
        sol = solve_flow(read_network(f))
        seg, q = sol.oriented()
        live = sol.live
        np.testing.assert_array_equal(seg[live], z["edges"][live])
        assert np.max(np.abs(q - z["flow"])) <= 3e-11 * float(z["qin"])
        np.testing.assert_allclose(sol.resistance, z["resistance"], rtol=1e-13)
        assert path_counts(sol)[0] == len(z["paths_ptr"]) - 1
    # mean path length by dynamic programming = the mean over the enumerated paths
    z = np.load(files[0])
    sol = solve_flow(read_network(files[0]))
    lookup = {tuple(e): L for e, L in zip(z["edges"], z["length"])}
    paths = [z["paths_flat"][a:b] for a, b in zip(z["paths_ptr"][:-1], z["paths_ptr"][1:])]
    lmp = np.mean([sum(lookup[(p[k], p[k + 1])] for k in range(len(p) - 1)) for p in paths])
    assert network_metrics(sol)["lmp"] == pytest.approx(lmp, rel=1e-12)
    # vm and vs equal the published arrays (2D networks; Net4's arrays belong to another geometry)
    for r in _reference_rows(3):
        m = network_metrics(solve_flow(read_network(SFS / r["npz"])))
        for key in ("vm", "vs"):
            ref = np.load(SFS / "reference_arrays" / f"Net{r['net']}" / f"Net{r['net']}_Pars_{key}.npy")[int(r["row"])]
            assert m[key] == pytest.approx(ref, rel=1e-11)


TRSE_TIMINGS = [(8.9, 17.6, 20.4, 6.0, 17.4, 63.9), (13.2, 19.3, 24.8, 7.7, 21.7, 74.2),
                (18.9, 21.0, 30.5, 9.5, 27.5, 87.5)]


@needs_sfs
def test_reference_trse_signals_within_monte_carlo_error():
    b = [0, 50, 100] * 3
    waves = [trse(*t) for t in TRSE_TIMINGS for _ in range(3)]
    dw = [1, 2, 4, 5, 7, 8]
    diff, noise = [], []
    for r in _reference_rows(29):
        ref = np.load(SFS / "reference_arrays" / f"Net{r['net']}" / f"Net{r['net']}_Sigs_TRSE.npy")[int(r["row"])]
        sol = solve_flow(read_network(SFS / r["npz"]))
        a = simulate_flow(sol, b, waves, n_spins=5000, seed=1, directions=[[1, 0, 0]]).signals
        c = simulate_flow(sol, b, waves, n_spins=5000, seed=2, directions=[[1, 0, 0]]).signals
        diff.append(np.mean(np.abs(a - ref)[dw]))
        noise.append(np.mean(np.abs(a - c)[dw]))
    # the reference used ~3000 spins (the SpinFlowSim paper and code, citations: spinflowsim): allow its MC error on top of ours
    assert len(diff) >= 30
    assert np.median(diff) <= 1.5 * np.median(noise) + 2e-3, (np.median(diff), np.median(noise))
    assert np.median(diff) < 0.013


@needs_sfs
def test_published_anb_rule_reproduces_the_published_arrays():
    from dmrimc_bids.core.simulate.flow.spins import anb_published
    for r in _reference_rows(97)[:4]:
        ref = np.load(SFS / "reference_arrays" / f"Net{r['net']}" / f"Net{r['net']}_Pars_anb.npy")[int(r["row"])]
        sol = solve_flow(read_network(SFS / r["npz"]))
        legacy = anb_published(sol, seed=3)
        true = simulate_flow(sol, [0], [None], n_spins=5000).anb
        # our emulation: +1..+14 % (median +6 %) over 20 rows; the published rule overstates the segments
        # spins enter by 2.3-8.3x (the SpinFlowSim paper and code, citations: spinflowsim)
        assert 0.95 * ref < legacy < 1.2 * ref, (ref, legacy)
        assert legacy > 2 * true


def test_published_anb_counts_boundaries_and_transitions():
    """One straight pipe along x from the origin: a spin entering k segments shows about 2 changes per
    transition + binade crossings + 1 per spin boundary, always more than the true count."""
    from dmrimc_bids.core.simulate.flow.spins import anb_published
    net = Network([[0, 0, 0], [40, 0, 0]], [[0, 1]], [4.0], 0, 1, 1e-3 * 1e9)
    sol = solve_flow(net)
    true = simulate_flow(sol, [0], [None], n_spins=500).anb
    legacy = anb_published(sol, n_spins=500)
    assert true > 5 and legacy >= 2 * true


def test_sampled_waveform_equals_its_analytic_shape():
    """A PGSE given as samples (0.1 ms) and a TRSE give the signals of their analytic forms."""
    from dmrimc_bids.core.waveforms import sampled
    net = Network([[0, 0, 0], [40, 0, 0], [40, 30, 0], [80, 30, 0], [90, 0, 0]],
                  [[0, 1], [1, 2], [0, 2], [2, 3], [1, 4], [4, 3]], [3, 4, 2.5, 3.5, 1.6, 6], 0, 3, 3e6)
    sol = solve_flow(net)
    t = np.arange(0, 40, 0.1)
    g = np.where(t < 10, 1.0, np.where((t >= 30) & (t < 40), -1.0, 0.0))
    a = simulate_flow(sol, [0, 50, 100], [None, pgse(10, 30), pgse(10, 30)], n_spins=2000, seed=2).signals
    b = simulate_flow(sol, [0, 50, 100], [None, sampled(g, 0.1)] * 1 + [sampled(g, 0.1)], n_spins=2000,
                      seed=2).signals
    np.testing.assert_allclose(a, b, atol=1e-9)
    assert a[2] < 0.99
