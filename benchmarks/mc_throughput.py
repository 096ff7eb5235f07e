#!/usr/bin/env python
"""Monte Carlo throughput in walker-steps per second on the mouse substrate (Histo-μSim settings).

Substrate: the traced mouse breast tumour of ../shared/reference/substrates/mouse_example (138
cells, ~14,400 membrane segments at 0.01 µm flattening), or, when absent, a generated packing of
the same size (core.simulate.generate.cell_packing, 140 cells; printed). Histo-μSim settings: dt =
110/2370 ms, 2,370 steps (a PGSE of δ = 30, Δ = 80 ms spans 110 ms), 20,000 walkers per
configuration, the 21-measurement PGSEin protocol's phases accumulated on the fly. Configurations
(D0in, D0ex, κ): (1.9, 1.9, 0), (1.9, 1.9, 40), (0.8, 3.0, 20) µm²/ms, µm/s; on a GPU also a batch of
the 225 Histo-μSim configurations of one substrate (4.5 M walkers in one launch). Reports the median
of --repeats runs after one warm-up (numba compiled), and the time the whole published dictionary
(4,050 runs x 20,000 walkers x 2,370 steps = 1.92e11 walker-steps) would take at that rate. The last
line printed is one JSON object.

    python benchmarks/mc_throughput.py [--threads 2] [--repeats 3] [--device cpu|gpu] [--record]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: Anchors quoted from ../shared/reference/README.md: MC/DC walker-steps/s per core (range), and the numba
#: prototype's walker-steps/s on 2 cores.
MCDC_PER_CORE = (1.9e4, 7.3e4)
PROTOTYPE_2_CORES = 4.0e6
MOUSE = HERE.parent.parent / "shared" / "reference" / "substrates" / "mouse_example" / "mouse_example_crop.svg"
PUBLISHED_STEPS = 4050 * 20000 * 2370
CONFIGS = [(1.9, 1.9, 0.0), (1.9, 1.9, 40.0), (0.8, 3.0, 20.0)]


def substrate(path: Path = MOUSE):
    from dmrimc_bids.core.simulate.generate import cell_packing
    from dmrimc_bids.core.simulate.substrate import read_svg
    if path.is_file():
        return read_svg(path, width_um=121.802), f"mouse example ({path})"
    print(f"note: {path} not found; using a generated 140-cell packing instead", file=sys.stderr)
    return cell_packing(0.62, 7.5, n_cells=140, seed=1), "generated packing (140 cells)"


def protocol():
    from dmrimc_bids.core.protocol import Protocol
    sys.path.insert(0, str(HERE))
    from loo_histo import B, BD, SD
    from dmrimc_bids.core.waveforms import protocol_waveforms
    p = Protocol(np.append(B, 1000.0), np.append(SD, 30.0), np.append(BD, 80.0))
    p.extra["waveforms"] = protocol_waveforms(p)  # the last one spans 110 ms: 2,370 steps
    return p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--walkers", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--grid-um", type=float, default=1.0)
    ap.add_argument("--svg", type=Path, default=MOUSE)
    ap.add_argument("--record", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args(argv)

    import numba

    from dmrimc_bids.core.simulate.montecarlo import simulate

    sub, source = substrate(args.svg)
    n_seg = len(sub.segments()[0])
    prot = protocol()
    dt = 110.0 / 2370.0
    d_in, d_ex, kap = (np.array([c[i] for c in CONFIGS]) for i in range(3))
    simulate(sub, prot, d_in, d_ex, kap, n_walkers=64, dt_ms=dt, device=args.device)  # compile / warm up
    rows, summary = [], {"substrate": source, "cells": sub.n_cells, "segments": n_seg, "device": args.device}
    for th in args.threads:
        if args.device == "cpu":
            numba.set_num_threads(min(th, numba.config.NUMBA_NUM_THREADS))
        rates, per_cfg = [], []
        for rep in range(args.repeats):
            res = simulate(sub, prot, d_in, d_ex, kap, n_walkers=args.walkers, dt_ms=dt, seed=rep,
                           grid_um=args.grid_um, device=args.device)
            assert res.n_steps == 2370, res.n_steps
            rates.append(res.steps_per_second)
            per_cfg.append(res.seconds / len(CONFIGS))
        rate = float(np.median(rates))
        rows.append((th, rate, float(np.median(per_cfg)), min(rates), max(rates)))
        summary[f"steps_per_s_{args.device}_{th}"] = rate
        print(f"{args.device} threads={th}: {rate:.3g} walker-steps/s (runs {min(rates):.3g}-{max(rates):.3g}); "
              f"one run ({args.walkers} walkers x 2370 steps) {np.median(per_cfg):.2f} s; whole published "
              f"dictionary {PUBLISHED_STEPS / rate / 3600:.2f} h")
    if args.device == "gpu":
        from dmrimc_bids.core.simulate.histo import HISTOUSIM_D0, HISTOUSIM_KAPPA, config_grid
        cfg = config_grid(HISTOUSIM_D0, HISTOUSIM_D0, HISTOUSIM_KAPPA)
        t0 = time.perf_counter()
        res = simulate(sub, prot, cfg[:, 0], cfg[:, 1], cfg[:, 2], n_walkers=args.walkers, dt_ms=dt,
                       device="gpu", batch_walkers=len(cfg) * args.walkers)
        wall = time.perf_counter() - t0
        summary["substrate_225_configs_s"] = wall
        summary["steps_per_s_gpu_batch225"] = res.steps_per_second
        summary["published_dictionary_s"] = 18 * wall
        print(f"gpu, 225 configurations in one launch: {wall:.2f} s ({res.steps_per_second:.3g} walker-steps/s); "
              f"18 substrates = the published dictionary: {18 * wall:.0f} s")
    print(json.dumps(summary))
    if args.record:
        sys.path.insert(0, str(HERE))
        from _record import machine, record
        lines = [f"Substrate: {source}: {sub.n_cells} cells, {n_seg} membrane segments; dt = 110/2370 ms, "
                 f"2,370 steps, {args.walkers} walkers per configuration, 3 configurations, 22 measurements. "
                 f"Machine: {machine()}. Command: `python benchmarks/mc_throughput.py --threads "
                 f"{' '.join(map(str, args.threads))} --repeats {args.repeats} --device {args.device} --record`.", "",
                 "| device | threads | walker-steps/s (median) | runs | one Histo-μSim run | published dictionary |",
                 "|---|---|---|---|---|---|"]
        for th, rate, per, lo, hi in rows:
            lines.append(f"| {args.device} | {th} | {rate:.3g} | {lo:.3g}-{hi:.3g} | {per:.2f} s | "
                         f"{PUBLISHED_STEPS / rate / 3600:.1f} h |")
        if "substrate_225_configs_s" in summary:
            lines.append(f"\nGPU, one substrate's 225 configurations in one launch: "
                         f"{summary['substrate_225_configs_s']:.2f} s "
                         f"({summary['steps_per_s_gpu_batch225']:.3g} walker-steps/s); the published "
                         f"dictionary (18 substrates): {summary['published_dictionary_s']:.0f} s.")
        one = {th: rate for th, rate, *_ in rows}
        if args.device == "cpu" and 1 in one and 2 in one:
            lines += ["", "Anchors quoted from `../shared/reference/README.md` (not measured here):",
                      f"- **MC/DC**, the C++ simulator Histo-μSim used: {MCDC_PER_CORE[0]:.2g}-{MCDC_PER_CORE[1]:.2g} "
                      f"walker-steps/s per core. Ours: **{one[1]:.3g} per core, {one[1] / MCDC_PER_CORE[1]:.0f}-"
                      f"{one[1] / MCDC_PER_CORE[0]:.0f}x faster**.",
                      f"- **Numba prototype** of this design: {PROTOTYPE_2_CORES:.2g} on 2 cores, the issue's "
                      f"requirement. Ours: **{one[2]:.3g} on 2 cores, {one[2] / PROTOTYPE_2_CORES:.1f}x that**."]
        record(f"mc-throughput-{args.device}", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
