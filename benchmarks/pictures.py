#!/usr/bin/env python
"""What the pictures of issue #8 cost: recording spins/walkers in the simulations, and drawing.

1. Recording: `spins.simulate_flow` on a generated capillary network (5,000 spins, PGSE 10/30 ms, 21
   measurements) without and with 300 spins recorded at 120 times; `montecarlo.simulate` on a
   generated 60-cell packing (2,000 walkers, 2 configurations, PGSE 10/30 ms) without and with 300
   walkers recorded at every step. Both must leave the signals bit for bit unchanged (checked here).
2. Drawing: seconds per frame of the flow video (300 spins, with the waveform panel) and of the walker
   video (300 walkers; compartment and phase colouring), to GIF (Pillow) and MP4 (ffmpeg, when found);
   seconds per still picture (plot_network 2D/3D, plot_signals, network_html).

Medians of --repeats runs after a warm-up (numba compiled). The last line printed is one JSON object.

    python benchmarks/pictures.py [--repeats 5] [--frames 60] [--record]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def recording(repeats):
    from dmrimc_bids.core.protocol import Protocol
    from dmrimc_bids.core.simulate.flow.generate import capillary_network
    from dmrimc_bids.core.simulate.flow.resolve import solve_flow
    from dmrimc_bids.core.simulate.flow.spins import simulate_flow
    from dmrimc_bids.core.simulate.generate import cell_packing
    from dmrimc_bids.core.simulate.montecarlo import simulate
    from dmrimc_bids.core.waveforms import pgse

    sol = solve_flow(capillary_network(0))
    w = pgse(10, 30)
    t = np.linspace(0, w.duration_ms, 120)
    args = (sol, [0.0] + list(np.linspace(10, 1000, 20)), [None] + [w] * 20)
    rows = {}
    rows["flow, 5000 spins"] = _median_time(lambda: simulate_flow(*args, n_spins=5000, seed=1), repeats)
    rows["flow, 5000 spins, 300 recorded x 120 times"] = _median_time(
        lambda: simulate_flow(*args, n_spins=5000, seed=1, track_spins=300, track_times_ms=t), repeats)
    same_flow = np.array_equal(simulate_flow(*args, n_spins=5000, seed=1).signals,
                               simulate_flow(*args, n_spins=5000, seed=1, track_spins=300, track_times_ms=t).signals)
    sub = cell_packing(0.6, 12.0, n_cells=60, seed=2)
    prot = Protocol(np.array([0, 1000, 2000.0]), np.array([np.nan, 10, 10.0]), np.array([np.nan, 30, 30.0]))
    mc = (sub, prot, [1.5, 2.0], [2.0, 2.5], [0.0, 20.0])
    rows["Monte Carlo, 2 x 2000 walkers"] = _median_time(lambda: simulate(*mc, n_walkers=2000, seed=1), repeats)
    rows["Monte Carlo, 2 x 2000 walkers, 300 recorded every step"] = _median_time(
        lambda: simulate(*mc, n_walkers=2000, seed=1, track_walkers=300), repeats)
    same_mc = np.array_equal(simulate(*mc, n_walkers=2000, seed=1).signals,
                             simulate(*mc, n_walkers=2000, seed=1, track_walkers=300).signals)
    return rows, same_flow and same_mc


def drawing(repeats, frames, tmp: Path):
    from dmrimc_bids.core.protocol import Protocol
    from dmrimc_bids.core.simulate.flow.generate import capillary_network, default_realisations
    from dmrimc_bids.core.simulate.flow.resolve import solve_flow
    from dmrimc_bids.core.simulate.flow.spins import simulate_flow
    from dmrimc_bids.core.simulate.generate import cell_packing
    from dmrimc_bids.core.simulate.montecarlo import simulate
    from dmrimc_bids.core.dictionary import Dictionary
    from dmrimc_bids.core.dictionary_default import default_dictionary_path
    from dmrimc_bids.core.waveforms import pgse
    from dmrimc_bids.reports import simulation as pics
    from dmrimc_bids.reports import video

    sol = solve_flow(capillary_network(0))
    w = pgse(10, 30)
    t = np.linspace(0, w.duration_ms, frames)
    ftrack = simulate_flow(sol, [0, 100], [None, w], n_spins=2000, seed=1, track_spins=300, track_times_ms=t).track
    sub = cell_packing(0.6, 12.0, n_cells=60, seed=2)
    prot = Protocol(np.array([0, 2000.0]), np.array([np.nan, 10]), np.array([np.nan, 30.0]))
    wtrack = simulate(sub, prot, [2.0], [2.0], [20.0], n_walkers=2000, seed=1, track_walkers=300).track
    steps = video.frame_indices(wtrack.position_um.shape[1], frames)
    movies = {
        "flow video": lambda: video.FlowAnimation(sol, ftrack, w, 100.0),
        "walker video, compartments": lambda: video.WalkerAnimation(sub, wtrack, steps, waveform=w, b=2000.0),
        "walker video, phase": lambda: video.WalkerAnimation(sub, wtrack, steps, waveform=w, b=2000.0,
                                                             colour="phase"),
    }
    rows = {}
    formats = [".gif"] + ([".mp4"] if video.find_ffmpeg() else [])
    for name, make in movies.items():
        for suffix in formats:
            out = tmp / f"v{suffix}"
            med, lo, hi = _median_time(lambda: video.save_animation(make(), out, progress=False), repeats)
            rows[f"{name} ({suffix[1:].upper()}), per frame"] = (med / frames, lo / frames, hi / frames)
            rows[f"{name} ({suffix[1:].upper()}), file size [kB]"] = (out.stat().st_size / 1e3,) * 3
    net3d = next(n for n in default_realisations() if not n.is_planar)
    sol3d = solve_flow(net3d)
    dic = Dictionary.load(default_dictionary_path())
    stills = {"plot_network, 2D": lambda: pics.plot_network(sol, tmp / "n.png"),
              "plot_network, 3D": lambda: pics.plot_network(sol3d, tmp / "n3.png"),
              "plot_signals, default dictionary entry": lambda: pics.plot_signals(dic, 100, tmp / "s.png")}
    if importlib.util.find_spec("plotly"):
        stills["network_html, 3D"] = lambda: pics.network_html(sol3d, tmp / "n.html")
    for name, fn in stills.items():
        rows[f"{name}, per picture"] = _median_time(fn, repeats)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--record", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args(argv)
    rec, unchanged = recording(args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        draw = drawing(max(1, args.repeats // 2 + 1), args.frames, Path(tmp))
    lines = ["| what | median | range |", "|---|---|---|"]
    for name, (med, lo, hi) in rec.items():
        lines.append(f"| {name} | {med * 1e3:.1f} ms | {lo * 1e3:.1f}-{hi * 1e3:.1f} ms |")
    for name, (med, lo, hi) in draw.items():
        if "kB" in name:
            lines.append(f"| {name} | {med:.0f} | |")
        else:
            lines.append(f"| {name} | {med:.3f} s | {lo:.3f}-{hi:.3f} s |")
    from _record import machine, record
    text = (f"Command: `python benchmarks/pictures.py --repeats {args.repeats} --frames {args.frames} --record`; "
            f"machine: {machine()}. Signals with and without recording identical: {unchanged}.\n\n"
            + "\n".join(lines))
    print(text)
    if args.record:
        record("pictures", text)
    print(json.dumps({"recording": {k: v[0] for k, v in rec.items()}, "drawing": {k: v[0] for k, v in draw.items()},
                      "unchanged": unchanged}))


if __name__ == "__main__":
    main()
