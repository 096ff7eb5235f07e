#!/usr/bin/env python
"""Our flow simulator against the published SpinFlowSim networks and arrays (../shared/reference/spinflowsim).

Per realisation (2D networks Net1..Net10 and 3D networks): flows vs the stored PySpice flows (relative to
Qin), Kirchhoff residual, npaths vs the stored path list; for the rows of the reference arrays (the row
map of reference_arrays/row_to_realisation.csv; Net4's arrays belong to another geometry and are
skipped): vm, vs vs the published values, and the mean |ΔS| over the diffusion-weighted measurements of
the TRSE, subsetPGSE and richPGSE arrays (x direction, as published), beside our own Monte Carlo noise
floor (two seeds). The published PGSE arrays were simulated on damaged network objects and cannot be
reproduced (the SpinFlowSim paper and code, citations: spinflowsim): reported, not tuned to. Timing: resolve + signals per
realisation for the richPGSE protocol (99 measurements, 9 waveforms) and for TRSE, 5000 spins, median
over realisations, after a warm-up; the published implementation needs about 2 min and a 1.2 GB
trajectory array per realisation (pure-Python loops over spins and steps; the SpinFlowSim paper and code, citations: spinflowsim).
The last line printed is one JSON object.

    python benchmarks/spinflowsim_reference.py --data ../shared/reference/spinflowsim [--rows-step 5]
        [--threads 1] [--record]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PUBLISHED_S_PER_REALISATION = 120.0
TRSE = [(8.9, 17.6, 20.4, 6.0, 17.4, 63.9), (13.2, 19.3, 24.8, 7.7, 21.7, 74.2), (18.9, 21.0, 30.5, 9.5, 27.5, 87.5)]


def protocols():
    from dmrimc_bids.core.waveforms import pgse, trse
    out = {"TRSE": ([0, 50, 100] * 3, [trse(*t) for t in TRSE for _ in range(3)]),
           "subsetPGSE": ([0, 50, 100] * 3, [pgse(20, d) for d in (30, 50, 70) for _ in range(3)])}
    b, w = [], []
    for big in (30, 50, 70):
        for small in (10, 20, 30):
            for bb in range(0, 101, 10):
                b.append(bb)
                w.append(pgse(small, big))
    out["richPGSE"] = (b, w)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="../shared/reference/spinflowsim")
    ap.add_argument("--rows-step", type=int, default=5, help="use every k-th reference row (5)")
    ap.add_argument("--spins", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--record", action="store_true", help="write the figures into docs/benchmarks.md")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"reference data not found at {args.data}: nothing to compare", file=sys.stderr)
        return 0
    import numba

    from dmrimc_bids.core.simulate.flow.metrics import network_metrics, path_counts
    from dmrimc_bids.core.simulate.flow.network import read_network
    from dmrimc_bids.core.simulate.flow.resolve import solve_flow
    from dmrimc_bids.core.simulate.flow.spins import simulate_flow

    numba.set_num_threads(args.threads)
    # 1. flows of every network file
    flow_err, kcl, paths_ok, n_files = {}, [], 0, 0
    for f in sorted(args.data.glob("networks*/Net*/*.npz")):
        z = np.load(f)
        sol = solve_flow(read_network(f))
        _, q = sol.oriented()
        key = f.parts[-3]
        flow_err[key] = max(flow_err.get(key, 0.0), float(np.max(np.abs(q - z["flow"])) / float(z["qin"])))
        kcl.append(sol.kcl_residual)
        paths_ok += int(path_counts(sol)[0] == len(z["paths_ptr"]) - 1)
        n_files += 1
    print(f"flows: {n_files} files; max |q - q_published| / Qin: " +
          ", ".join(f"{k} {v:.1e}" for k, v in flow_err.items()) + f"; Kirchhoff residual max {max(kcl):.1e} Qin;"
          f" npaths equal in {paths_ok}/{n_files}")
    # 2. metrics and signals on the reference rows
    protos = protocols()
    rows = list(csv.DictReader(open(args.data / "reference_arrays" / "row_to_realisation.csv")))
    rows = [r for r in rows if r["net"] != "4" and (args.data / "reference_arrays" / f"Net{r['net']}").is_dir()]
    rows = rows[::args.rows_step]
    warm = solve_flow(read_network(args.data / rows[0]["npz"]))
    simulate_flow(warm, *protos["richPGSE"], n_spins=100, seed=0, directions=[[1, 0, 0]])
    vm_err, diff, noise, times = [], {k: [] for k in protos}, {k: [] for k in protos}, {"richPGSE": [], "TRSE": []}
    for r in rows:
        ref_dir = args.data / "reference_arrays" / f"Net{r['net']}"
        i = int(r["row"])
        net = read_network(args.data / r["npz"])
        for name, (b, w) in protos.items():
            t0 = time.perf_counter()
            sol = solve_flow(net)
            a = simulate_flow(sol, b, w, n_spins=args.spins, seed=1, directions=[[1, 0, 0]]).signals
            if name in times:
                times[name].append(time.perf_counter() - t0)
            c = simulate_flow(sol, b, w, n_spins=args.spins, seed=2, directions=[[1, 0, 0]]).signals
            ref = np.load(ref_dir / f"Net{r['net']}_Sigs_{name}.npy")[i]
            dw = np.asarray(b) > 0
            diff[name].append(float(np.mean(np.abs(a - ref)[dw])))
            noise[name].append(float(np.mean(np.abs(a - c)[dw])))
        m = network_metrics(sol)
        for key in ("vm", "vs"):
            ref = np.load(ref_dir / f"Net{r['net']}_Pars_{key}.npy")[i]
            vm_err.append(abs(m[key] - ref) / ref)
    print(f"vm, vs on {len(rows)} reference rows (Nets 1-3, 5-10): max relative difference {max(vm_err):.1e}")
    print("signals, mean |S_ours - S_published| over DW measurements (median / p90), ours vs ours (2 seeds):")
    summary = {}
    for name in protos:
        d, n = np.array(diff[name]), np.array(noise[name])
        print(f"  {name:11s} {np.median(d):.4f} / {np.percentile(d, 90):.4f}   noise floor {np.median(n):.4f}"
              + ("   (published PGSE arrays are not reproducible: damaged objects)" if "PGSE" in name else ""))
        summary[f"{name}_median_abs_diff"] = round(float(np.median(d)), 5)
        summary[f"{name}_noise_floor"] = round(float(np.median(n)), 5)
    t_rich, t_trse = float(np.median(times["richPGSE"])), float(np.median(times["TRSE"]))
    print(f"time per realisation (resolve + signals, {args.spins} spins, {args.threads} thread(s)): "
          f"richPGSE {t_rich * 1e3:.1f} ms, TRSE {t_trse * 1e3:.1f} ms; published ~{PUBLISHED_S_PER_REALISATION:.0f} s "
          f"-> {PUBLISHED_S_PER_REALISATION / t_rich:.0f}x (richPGSE)")
    summary.update({"files": n_files, "max_flow_err_over_qin": max(flow_err.values()), "max_kcl": max(kcl),
                    "npaths_equal": paths_ok, "rows": len(rows), "vm_vs_max_rel_err": max(vm_err),
                    "s_per_realisation_richPGSE": round(t_rich, 5), "s_per_realisation_TRSE": round(t_trse, 5),
                    "speedup_vs_published": round(PUBLISHED_S_PER_REALISATION / t_rich, 1),
                    "spins": args.spins, "threads": args.threads})
    if args.record:
        from _record import machine, record
        record("spinflowsim_reference", "\n".join([
            f"Command: `python benchmarks/spinflowsim_reference.py --data ../shared/reference/spinflowsim "
            f"--rows-step {args.rows_step} --threads {args.threads} --record`; machine: {machine()}.", "",
            "| check | result |", "|---|---|",
            f"| flows vs published PySpice, {n_files} files | max {max(flow_err.values()):.1e} Qin; Kirchhoff "
            f"{max(kcl):.1e} Qin; npaths equal {paths_ok}/{n_files} |",
            f"| vm, vs vs published arrays, {len(rows)} rows | max relative difference {max(vm_err):.1e} |",
            *[f"| {k} signals, median (noise floor) | {summary[k + '_median_abs_diff']:.4f} "
              f"({summary[k + '_noise_floor']:.4f}) |" for k in protos],
            f"| time per realisation, {args.spins} spins, {args.threads} thread | richPGSE {t_rich * 1e3:.1f} ms, "
            f"TRSE {t_trse * 1e3:.1f} ms; published ~120 s (quoted from ../shared/reference/README.md): "
            f"{PUBLISHED_S_PER_REALISATION / t_rich:.0f}x |"]))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
