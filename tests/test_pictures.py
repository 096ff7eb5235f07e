"""Pictures of the simulations: recorded spins/walkers, network maps, signal plots, videos (issue #8).

The videos must show the simulation's own spins and walkers: the recorded positions are checked against
analytic motion and the simulation's phases, and the drawn positions against the recorded ones.
"""

import json

import numpy as np
import pytest

from dmrimc_bids.core.errors import InputError
from dmrimc_bids.core.protocol import Protocol
from dmrimc_bids.core.simulate.flow.network import Network
from dmrimc_bids.core.simulate.flow.resolve import solve_flow
from dmrimc_bids.core.simulate.flow.spins import simulate_flow
from dmrimc_bids.core.simulate.generate import cell_packing
from dmrimc_bids.core.simulate.montecarlo import simulate
from dmrimc_bids.core.simulate.tracks import load_track, save_track
from dmrimc_bids.core.waveforms import pgse, protocol_waveforms, unique_waveforms
from dmrimc_bids.reports import video
from dmrimc_bids.reports.simulation import network_lines, plot_network, plot_signals, reference_curves

PIL = pytest.importorskip("PIL.Image")


def straight_pipe(radius_um=3.0, qin_um3_per_s=2e5):
    """Two collinear segments, 0 -> 50 -> 100 µm along x: plug flow at q/(π r²), period 100 µm."""
    return Network([[0, 0, 0], [50, 0, 0], [100, 0, 0]], [[0, 1], [1, 2]], [radius_um] * 2, 0, 2,
                   qin_um3_per_s, "pipe")


def test_recorded_spins_move_as_plug_flow_through_the_periodic_copies():
    sol = solve_flow(straight_pipe())
    v = 2e5 / (np.pi * 9.0) * 1e-3  # µm/ms
    w = pgse(10, 30)
    t = np.linspace(0, w.duration_ms, 81)
    sim = simulate_flow(sol, [0, 100], [None, w], n_spins=400, seed=2, track_spins=40, track_times_ms=t)
    tr = sim.track
    assert tr.position_um.shape == (40, 81, 3) and tr.spin.tolist() == list(range(0, 400, 10))
    x = tr.position_um[..., 0]
    np.testing.assert_allclose(x, x[:, :1] + v * t[None, :], atol=1e-9)  # x(t) = x0 + v t, across copies
    np.testing.assert_array_equal(tr.position_um[..., 1:], 0)
    np.testing.assert_array_equal(tr.copy, np.floor(x / 100 - 1e-12).clip(0))  # one copy per 100 µm
    assert tr.copy.max() >= 1  # the spins do enter a periodic copy (v·40 ms = 283 µm)
    np.testing.assert_array_equal(tr.segment, (x - 100 * tr.copy >= 50).astype(int))
    np.testing.assert_allclose(tr.shift_um, [100, 0, 0])


def test_recording_spins_changes_nothing_and_the_positions_give_the_simulated_phase():
    from dmrimc_bids.core.simulate.flow.generate import capillary_network
    sol = solve_flow(capillary_network(1))
    w = pgse(8, 20)
    b, waves = [0, 50, 200], [None, w, w]
    t = np.linspace(0, w.duration_ms, 8001)
    plain = simulate_flow(sol, b, waves, n_spins=1000, seed=4)
    rec = simulate_flow(sol, b, waves, n_spins=1000, seed=4, track_spins=25, track_times_ms=t)
    np.testing.assert_array_equal(plain.signals, rec.signals)
    np.testing.assert_array_equal(plain.integral, rec.integral)
    tr = rec.track
    # every recorded point lies on the segment it is recorded in (in its copy's frame)
    net = sol.network
    p = tr.position_um - tr.copy[..., None] * tr.shift_um
    a, c = net.nodes[net.segments[tr.segment, 0]], net.nodes[net.segments[tr.segment, 1]]
    u = np.einsum("...i,...i", p - a, c - a) / np.einsum("...i,...i", c - a, c - a)
    assert np.all((u > -1e-9) & (u < 1 + 1e-9))
    np.testing.assert_allclose(a + u[..., None] * (c - a), p, atol=1e-6)
    # ∫ g(t) r(t) dt from the recorded positions = the simulation's phase integral of those spins
    tb, gv = np.asarray(w.breaks_ms), np.append(w.values, 0.0)
    g = gv[np.clip(np.searchsorted(tb, t, side="right") - 1, 0, len(gv) - 1)]
    numeric = np.trapezoid(g[None, :, None] * tr.position_um, t, axis=1)
    exact = rec.integral[tr.spin, 0]
    np.testing.assert_allclose(numeric, exact, atol=2e-3 * np.abs(exact).max())


@pytest.fixture(scope="module")
def walk():
    sub = cell_packing(fin=0.5, mean_cs_um=14.0, n_cells=12, seed=3)
    prot = Protocol(np.array([0, 1000, 2500.0]), np.array([np.nan, 10, 10.0]), np.array([np.nan, 25, 25.0]))
    kw = dict(n_walkers=400, seed=5, keep_walkers=True, dt_ms=0.015)
    plain = simulate(sub, prot, [1.5, 2.0], [2.0, 2.5], [0, 30], **kw)
    rec = simulate(sub, prot, [1.5, 2.0], [2.0, 2.5], [0, 30], **kw, track_walkers=30, track_config=1,
                   batch_walkers=500)
    return sub, prot, plain, rec


def test_recorded_walkers_are_the_walk(walk):
    sub, prot, plain, rec = walk
    np.testing.assert_array_equal(plain.signals, rec.signals)  # recording changes nothing
    tr, kept = rec.track, rec.walkers
    sel = slice(400, 430)  # configuration 1's first 30 walkers
    assert tr.config == (2.0, 2.5, 30.0) and tr.position_um.shape == (30, rec.n_steps + 1, 2)
    np.testing.assert_array_equal(tr.position_um[:, -1], kept["disp"][sel, 2:])
    np.testing.assert_array_equal(tr.displacement_um[:, -1], kept["disp"][sel, :2])
    np.testing.assert_array_equal(tr.compartment[:, [0, -1]], kept["label"][sel])
    # the phase accumulated along the recorded steps ends at the phase the signal used
    waves, meas_wave = unique_waveforms(protocol_waveforms(prot))
    for m in (1, 2):
        phase = tr.phase(waves[meas_wave[m]], prot.b[m])
        np.testing.assert_allclose(phase[:, -1], np.sqrt(prot.b[m] * 1e-3) * kept["phase"][sel, meas_wave[m]],
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(phase[:, 0], 0)
    # steps are at most the 3D step length of the faster compartment; positions stay in the tile
    step = np.linalg.norm(np.diff(tr.displacement_um, axis=1), axis=2)
    assert step.max() <= np.sqrt(6 * 2.5 * rec.dt_ms) * (1 + 1e-9)
    assert np.all(tr.position_um >= 0) and np.all(tr.position_um < np.asarray(sub.tile_um))


def test_impermeable_walkers_never_change_compartment():
    sub = cell_packing(fin=0.6, mean_cs_um=9.0, n_cells=10, seed=1)
    prot = Protocol(np.array([0, 1000.0]), np.array([np.nan, 10]), np.array([np.nan, 20.0]))
    tr = simulate(sub, prot, [2.0], [2.0], [0.0], n_walkers=200, seed=1, track_walkers=200).track
    assert np.all(tr.compartment == tr.compartment[:, :1])
    assert 0 < np.mean(tr.compartment[:, 0] >= 0) < 1  # both compartments are sampled


def test_tracks_round_trip(tmp_path, walk):
    tr = walk[3].track
    back = load_track(save_track(tr, tmp_path / "t.npz"))
    assert type(back) is type(tr) and back.config == tr.config and back.tile_um == tr.tile_um
    np.testing.assert_array_equal(back.position_um, tr.position_um)
    sim = simulate_flow(solve_flow(straight_pipe()), [0], [None], n_spins=50, track_spins=5,
                        track_times_ms=[0.0, 1.0])
    back = load_track(save_track(sim.track, tmp_path / "f.npz"))
    np.testing.assert_array_equal(back.position_um, sim.track.position_um)
    np.testing.assert_array_equal(back.spin, sim.track.spin)


def _gif(path):
    im = PIL.open(path)
    return im.n_frames, im.size


def test_flow_video_draws_the_recorded_spins_and_copies(tmp_path):
    from dmrimc_bids.core.simulate.flow.generate import capillary_network
    net = capillary_network(2).with_flow(4e-3)
    sol = solve_flow(net)
    w = pgse(10, 25)
    t = np.linspace(0, w.duration_ms, 12)
    tr = simulate_flow(sol, [0, 200], [None, w], n_spins=600, seed=1, track_spins=60, track_times_ms=t).track
    anim = video.FlowAnimation(sol, tr, w, 200.0, dpi=60)
    assert anim.n_frames == 12 and len(anim.copies) == tr.copy.max() + 1 >= 2
    for k in (0, 5, 11):
        anim.draw(k)
        np.testing.assert_array_equal(anim.drawn_positions(), tr.position_um[:, k, :2])
        shown = [all(a.get_visible() for a in arts) for arts in anim.copies]
        assert shown == [c <= tr.copy[:, :k + 1].max() for c in range(len(anim.copies))]
        assert anim.cursor.get_xdata()[0] == t[k] and f"{t[k]:6.2f} ms" in anim.clock.get_text()
    width, height = (anim.fig.get_size_inches() * 60).round().astype(int)
    out = video.save_animation(anim, tmp_path / "flow.gif", fps=10, progress=False)
    assert _gif(out) == (12, (width, height))
    assert [p.name for p in tmp_path.iterdir()] == ["flow.gif"]  # no temporary file left


def test_mp4_through_ffmpeg(tmp_path):
    if video.find_ffmpeg() is None:
        pytest.skip("no ffmpeg (apt-get install ffmpeg or pip install imageio-ffmpeg)")
    sol = solve_flow(straight_pipe())
    t = np.linspace(0, 20, 9)
    tr = simulate_flow(sol, [0], [None], n_spins=100, track_spins=20, track_times_ms=t).track
    out = video.save_animation(video.FlowAnimation(sol, tr, dpi=50), tmp_path / "pipe.mp4", progress=False)
    head = out.read_bytes()[:12]
    assert head[4:8] == b"ftyp"
    try:
        import imageio_ffmpeg
    except ImportError:
        return
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(out))
    assert frames == 9


def test_video_names_and_missing_ffmpeg_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(InputError, match=r"\.gif or \.mp4"):
        video.check_video_path(tmp_path / "v.avi")
    with pytest.raises(InputError, match="folder does not exist"):
        video.check_video_path(tmp_path / "no" / "v.gif")
    monkeypatch.setattr(video, "find_ffmpeg", lambda: None)
    with pytest.raises(InputError, match="needs ffmpeg") as exc:
        video.check_video_path(tmp_path / "v.mp4")
    assert "apt-get install ffmpeg" in exc.value.fix and ".gif" in exc.value.fix
    assert video.check_video_path(tmp_path / "v.GIF") == "pillow"


def test_walker_video_draws_the_recorded_walkers(tmp_path, walk):
    sub, prot, _, rec = walk
    tr = rec.track
    waves, meas_wave = unique_waveforms(protocol_waveforms(prot))
    steps = video.frame_indices(tr.position_um.shape[1], 7)
    assert len(steps) == 7 and steps[0] == 0 and steps[-1] == tr.position_um.shape[1] - 1
    anim = video.WalkerAnimation(sub, tr, steps, waveform=waves[meas_wave[2]], b=2500.0, colour="compartment",
                                 dpi=50)
    intra = np.array(video._rgba(video.INTRA_COLOUR))
    for k in (0, 3, 6):
        anim.draw(k)
        np.testing.assert_array_equal(anim.drawn_positions(), tr.position_um[:, steps[k]])
        faces = anim.walkers.get_facecolors()
        np.testing.assert_array_equal(np.all(faces == intra, axis=1), tr.compartment[:, steps[k]] >= 0)
    phase = video.WalkerAnimation(sub, tr, steps, waveform=waves[meas_wave[2]], b=2500.0, colour="phase", dpi=50)
    phase.draw(6)
    expected = tr.phase(waves[meas_wave[2]], 2500.0)[:, steps[6], 0]
    np.testing.assert_allclose(phase.walkers.get_array(), np.angle(np.exp(1j * expected)), atol=1e-12)
    width, height = (anim.fig.get_size_inches() * 50).round().astype(int)
    assert _gif(video.save_animation(anim, tmp_path / "w.gif", progress=False)) == (7, (width, height))
    with pytest.raises(ValueError, match="needs a waveform"):
        video.WalkerAnimation(sub, tr, steps, colour="phase")


def test_network_map_colours_are_the_velocities_and_flows(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    from dmrimc_bids.core.simulate.flow.generate import capillary_network
    sol = solve_flow(capillary_network(4))
    fig, ax = plt.subplots()
    lines = network_lines(ax, sol, sol.velocity_um_per_s * 1e-3, Normalize(), "viridis")
    np.testing.assert_allclose(lines.get_array(), sol.velocity_um_per_s[sol.live] * 1e-3)
    segs = np.array(lines.get_segments())
    np.testing.assert_array_equal(segs, sol.network.nodes[sol.network.segments[sol.live]][:, :, :2])
    plt.close(fig)
    png = plot_network(sol, tmp_path / "net.png")
    assert PIL.open(png).size[0] > 800
    three_d = Network(sol.network.nodes + np.c_[0 * sol.network.nodes[:, :2], np.arange(len(sol.network.nodes))],
                      sol.network.segments, sol.network.radius_um, sol.network.inlet, sol.network.outlet,
                      sol.network.qin_um3_per_s, "tilted")
    assert not three_d.is_planar
    assert PIL.open(plot_network(solve_flow(three_d), tmp_path / "net3d.png")).size[0] > 800


def test_interactive_network_view(tmp_path):
    pytest.importorskip("plotly")
    from dmrimc_bids.core.simulate.flow.generate import capillary_network
    from dmrimc_bids.reports.simulation import network_html
    sol = solve_flow(capillary_network(5))
    html = network_html(sol, tmp_path / "net.html").read_text()
    hover = html.replace("\\u002f", "/")  # plotly escapes "/" in its JSON
    assert hover.count('"hovertext":"segment ') == int(sol.live.sum())  # one per segment with flow
    assert "velocity [mm/s]" in hover and '"name":"inlet"' in hover and '"name":"outlet"' in hover
    e = int(np.argmax(sol.velocity_um_per_s))
    assert f'"hovertext":"segment {e}: v {sol.velocity_um_per_s[e] * 1e-3:.3g} mm/s' in hover


def test_signal_plot_references(tmp_path):
    from dmrimc_bids.core.dictionary import Dictionary
    from dmrimc_bids.core.dictionary_default import default_dictionary_path
    d = Dictionary.load(default_dictionary_path())
    k = len(d) // 2
    refs = dict((lab.split(",")[1].split("=")[0].strip(), val) for lab, val in reference_curves(d, k))
    assert refs == {"D0ex": d.params[k, d.names.index("D0ex")], "D0in": d.params[k, d.names.index("D0in")]}
    assert PIL.open(plot_signals(d, k, tmp_path / "s.png")).size[0] > 500
    with pytest.raises(InputError, match="does not exist"):
        plot_signals(d, len(d), tmp_path / "x.png")
    # a flow entry: the diffusive-regime pseudo-diffusion D* = vm·lm/4 (planar), /6 (3D)
    flow = Dictionary(np.ones((1, 2)), np.array([[2.0, 60.0]]), ["vm", "lm"], d.protocol.subset([0, 1]), {}, {})
    assert reference_curves(flow, 0)[0][1] == pytest.approx(30.0)
    assert reference_curves(flow, 0, planar=False)[0][1] == pytest.approx(20.0)


# ---- the CLI ------------------------------------------------------------------------------------------
def _sim(capsys, *args):
    from dmrimc_bids.cli.sim import main as sim_main
    try:
        code = sim_main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr()


def test_sim_flow_plot_and_video(tmp_path, capsys):
    from dmrimc_bids.core.simulate.flow.generate import capillary_network
    (tmp_path / "net.json").write_text(json.dumps(capillary_network(3).to_json()))
    prot = tmp_path / "prot.tsv"
    prot.write_text("b\tsmall_delta\tbig_delta\n0\tn/a\tn/a\n100\t10\t30\n400\t10\t30\n")
    out = tmp_path / "flow.npz"
    code, cap = _sim(capsys, "flow", "--network", tmp_path / "net.json", "--qin", "1e-3", "4e-3", "--protocol", prot,
                     "--spins", 300, "--out", out, "--plot", "--show-entry", 1, "--video", tmp_path / "spins.gif",
                     "--video-frames", 6, "--video-spins", 30, "--realisations-per-job", 1, "-w", tmp_path / "work")
    assert code == 0, cap.err
    assert _gif(tmp_path / "spins.gif")[0] == 6
    assert (tmp_path / "flow.png").is_file() and (tmp_path / "flow_signals.png").is_file()
    assert not list(tmp_path.glob(".*"))
    # the video's spins are those the job simulating entry 1 (Qin 4e-3) moved: the same run in process
    from dmrimc_bids.core.simulate.flow.dictionary import realisation_seed
    from dmrimc_bids.bids.protocol import read_simulation_protocol
    shown = load_track(tmp_path / "work" / "video_track.npz")
    p = read_simulation_protocol(prot)
    again = simulate_flow(solve_flow(capillary_network(3).with_flow(4e-3)), p.b, protocol_waveforms(p), n_spins=300,
                          seed=realisation_seed(0, 1), track_spins=30, track_times_ms=shown.times_ms).track
    np.testing.assert_array_equal(shown.position_um, again.position_um)
    np.testing.assert_allclose(shown.times_ms, np.linspace(0, 40, 6))


def test_sim_histo_video_with_phase(tmp_path, capsys):
    svg = tmp_path / "cells.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 60"><circle cx="20" cy="20" r="12"/>'
                   '<circle cx="60" cy="30" r="15"/></svg>')
    prot = tmp_path / "prot.tsv"
    prot.write_text("b\tsmall_delta\tbig_delta\n0\tn/a\tn/a\n1000\t10\t20\n2000\t10\t20\n")
    out = tmp_path / "h.npz"
    args = ["histo", "--svg", svg, "--width-um", 50, "--protocol", prot, "--d0in", 1, 2, "--d0ex", 2,
            "--kappa", 0, "--walkers", 200, "--out", out, "--device", "cpu", "--show-entry", 1]
    code, cap = _sim(capsys, *args, "--plot", "--video", tmp_path / "w.gif", "--video-frames", 5, "--video-phase",
                     "--configs-per-job", 1, "-w", tmp_path / "work")
    assert code == 0, cap.err
    assert _gif(tmp_path / "w.gif")[0] == 5 and (tmp_path / "h_signals.png").is_file()
    from dmrimc_bids.core.dictionary import Dictionary
    d = Dictionary.load(out)
    shown = load_track(tmp_path / "work" / "video_track.npz")  # entry 1's walkers: D0in 2, D0ex 2, κ 0
    assert shown.config == tuple(d.params[1, [d.names.index(n) for n in ("D0in", "D0ex", "kappa")]])
    assert shown.config == (2.0, 2.0, 0.0) and shown.position_um.shape[0] == 200
    # bad requests fail before simulating: one line, exit 64, nothing written
    for extra, text in ((["--video", tmp_path / "w.avi"], ".gif or .mp4"),
                        (["--show-entry", 2], "--show-entry 2"),
                        (["--video", tmp_path / "v.gif", "--video-measurement", 0], "--video-measurement 0")):
        bad = tmp_path / "bad.npz"
        code, cap = _sim(capsys, *[bad if a == out else a for a in args[:-2]], *extra)
        assert code == 64 and text in cap.err and len(cap.err.strip().splitlines()) == 1, cap.err
        assert not bad.exists() and not (tmp_path / "v.gif").exists()


def test_sim_plot_draws_existing_dictionaries_and_networks(tmp_path, capsys):
    from dmrimc_bids.core.dictionary_default import default_dictionary_path
    from dmrimc_bids.core.simulate.flow.generate import capillary_network
    import xml.etree.ElementTree as ET

    pixels = {}
    for entry, name in ((7, "a.png"), (7, "b.png"), (5000, "c.png")):
        code, cap = _sim(capsys, "plot", "--dictionary", default_dictionary_path(), "--entry", entry,
                         "--out", tmp_path / name)
        assert code == 0 and PIL.open(tmp_path / name).size[0] > 500, cap.err
        pixels[name] = np.asarray(PIL.open(tmp_path / name))
    # the entry's own signals are drawn: the same entry twice is the same picture, another entry is not
    assert np.array_equal(pixels["a.png"], pixels["b.png"]) and not np.array_equal(pixels["a.png"], pixels["c.png"])
    net = capillary_network(2)
    (tmp_path / "n.json").write_text(json.dumps(net.to_json()))
    code, cap = _sim(capsys, "plot", "--network", tmp_path / "n.json", "--qin", "2e-3", "--out", tmp_path / "n.svg")
    assert code == 0, cap.err
    svg = "{http://www.w3.org/2000/svg}"
    drawn = [len(g.findall(f".//{svg}path")) for g in ET.parse(tmp_path / "n.svg").getroot().iter(f"{svg}g")
             if g.get("id", "").startswith("LineCollection")]
    assert sum(drawn) == 2 * len(net.segments)  # every segment once in the velocity and once in the flow panel
    code, cap = _sim(capsys, "plot", "--dictionary", default_dictionary_path(), "--out", tmp_path / "s.html")
    assert code == 64 and ".png, .svg, .pdf" in cap.err and not (tmp_path / "s.html").exists()
