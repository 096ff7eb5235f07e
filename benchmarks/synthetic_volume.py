#!/usr/bin/env python
"""Large-volume dictionary-fit benchmark: 1e5 voxels, 21 measurements, 4050 entries, 5 parameters.

The dictionary is the published 4050-entry PGSEin dictionary (../shared/reference/histo_loo) when it
is there, otherwise a synthetic one of the same shape (18 random (fin, vCS) "substrates" x 5 D0in x
5 D0ex x 9 kappa, analytic restricted + hindered signal with a first-order exchange loss; for timing
only). Voxels are random entries with Rician noise at SNR 50 (σ = 0.02); the fit uses the σ map.
Times the grid search + refinement (surrogate built beforehand, numba compiled beforehand) and
reports voxels/s, median of --repeats runs. The last line printed is one JSON object.

    python benchmarks/synthetic_volume.py [--voxels 100000] [--threads 1 2] [--repeats 3] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "reference" / "histo_loo"
NAMES = ["fin", "vCS_cyl", "D0in", "D0ex", "kappa"]


def dictionary(seed: int = 0, data: Path = SHARED):
    """(Dictionary, source) with 4050 entries on the 21-measurement PGSEin protocol."""
    sys.path.insert(0, str(HERE))
    from loo_histo import B, BD, SD

    from dmrimc_bids.core.analytic import restricted_signal
    from dmrimc_bids.core.dictionary import Dictionary
    from dmrimc_bids.core.protocol import Protocol

    proto = Protocol(B, SD, BD)
    sig_f, par_f = data / "all_signals_PGSEin_config14.npy", data / "all_params_PGSEin_config14.npy"
    if sig_f.is_file() and par_f.is_file():
        return Dictionary(np.load(sig_f), np.load(par_f), NAMES, proto), "published PGSEin (histo_loo)"
    rng = np.random.default_rng(seed)
    subs = np.column_stack([rng.uniform(0.3, 0.8, 18), rng.uniform(8, 22, 18)])
    grid = np.stack(np.meshgrid(np.linspace(0.8, 3, 5), np.linspace(0.8, 3, 5), np.linspace(0, 80, 9),
                                indexing="ij"), -1).reshape(-1, 3)
    par = np.array([[f, v, *g] for f, v in subs for g in grid])
    b, d_small, d_big = proto.b, np.nan_to_num(proto.small_delta_ms, nan=1.0), np.nan_to_num(proto.big_delta_ms, nan=1.0)
    sig = np.empty((len(par), len(b)))
    for i, (f, v, din, dex, kap) in enumerate(par):
        ein = restricted_signal(b, v / 2, din, d_small, d_big, "cylinder")
        keep = np.exp(-(d_big * 1e-3) * 2 * kap / (v / 2))  # first-order exchange out of the cells
        fe = f * keep
        sig[i] = fe * ein + (1 - fe) * np.exp(-b * 1e-3 * dex / (1 + f))
    sig[:, b == 0] = 1.0
    return Dictionary(sig, par, NAMES, proto), "synthetic analytic (no shared data)"


def run(n_vox: int, threads: int, repeats: int, seed: int, surrogate: str, chunk: int, data: Path = SHARED,
        device: str = "cpu"):
    import numba
    from threadpoolctl import threadpool_limits

    from dmrimc_bids.core.fitting.dictfit import DictionaryModel

    dic, source = dictionary(seed, data)
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(dic.params), n_vox)
    sigma = 0.02
    clean = dic.signals[truth]
    noisy = np.hypot(clean + sigma * rng.standard_normal(clean.shape), sigma * rng.standard_normal(clean.shape))
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    with threadpool_limits(limits=threads):
        t0 = time.perf_counter()
        model = DictionaryModel(dic, surrogate=surrogate, chunk_size=chunk, device=device)
        model.surrogate
        t_build = time.perf_counter() - t0
        model.fit(noisy[:64], sigma=np.full(64, sigma))  # compile / load the kernels
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fit = model.fit(noisy, sigma=np.full(n_vox, sigma))
            times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    err = {k: round(float(np.median(np.abs(fit.params[k] - dic.params[truth, j]))), 4) for j, k in enumerate(NAMES)}
    return {"voxels": n_vox, "measurements": dic.signals.shape[1], "entries": len(dic.params),
            "parameters": len(NAMES), "dictionary": source, "surrogate": surrogate, "threads": threads,
            "device": fit.info["device"],
            "seconds_median": round(med, 2), "seconds_all": [round(t, 2) for t in times],
            "voxels_per_s": round(n_vox / med, 1), "surrogate_build_s": round(t_build, 2),
            "mean_lm_iterations": fit.info["mean_lm_iterations"], "medae_vs_truth": err,
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voxels", type=int, default=100_000)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--surrogate", choices=["local", "global"], default="local")
    ap.add_argument("--chunk-size", type=int, default=10000)
    ap.add_argument("--data", type=Path, default=SHARED, help="histo_loo folder (absent: synthetic dictionary)")
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--record", action="store_true", help="write the rows into docs/benchmarks.md")
    args = ap.parse_args(argv)
    results = [run(args.voxels, t, args.repeats, args.seed, args.surrogate, args.chunk_size, args.data,
                   args.device) for t in args.threads]
    for r in results:
        print(f"{r['threads']} thread(s): {r['voxels']} voxels in {r['seconds_median']} s (median of "
              f"{len(r['seconds_all'])}) = {r['voxels_per_s']} voxels/s; {r['dictionary']}", file=sys.stderr)
    if args.record:
        from _record import machine, record
        key = f"synthetic-{args.surrogate}-{results[0]['device']}"
        lines = [f"`python benchmarks/synthetic_volume.py --voxels {args.voxels} --threads "
                 f"{' '.join(map(str, args.threads))} --repeats {args.repeats} --surrogate {args.surrogate} "
                 f"--device {args.device} --record` ({machine()}; dictionary: {results[0]['dictionary']})", "",
                 "| threads | device | seconds (median) | runs | voxels/s | LM iterations/voxel | surrogate build s |",
                 "|---|---|---|---|---|---|---|"]
        for r in results:
            lines.append(f"| {r['threads']} | {r['device']} | {r['seconds_median']} | {r['seconds_all']} | "
                         f"{r['voxels_per_s']:.0f} | {r['mean_lm_iterations']} | {r['surrogate_build_s']} |")
        lines += ["", "MedAE vs the true entries (SNR 50): " + ", ".join(
            f"{k} {v}" for k, v in results[-1]["medae_vs_truth"].items())]
        record(key, "\n".join(lines))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
