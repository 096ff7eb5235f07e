#!/usr/bin/env python
"""Throughput of the default tissue estimate (posterior median over the embedded default dictionary).

The embedded dictionary (23,680 entries) is matched to the demo's 12 fitted measurements (b 450-2550
s/mm², δ/Δ 10/25 and 15/45 ms); voxels are random entries with Gaussian noise of σ = 0.02 (SNR 50). The
estimate runs in the app's batches (core/fitting/posterior.posterior_chunk). Reports voxels/s, median of
--repeats runs, at the given BLAS thread count. The last line printed is one JSON object.

    python benchmarks/posterior_throughput.py [--voxels 20000] [--threads 2] [--repeats 3] [--device cpu|gpu]
                                              [--size-factor 2] [--record]

The estimate is the app's default (dmrimc_bids/options.DEFAULT_POINT_PRIOR). --size-factor K times the
dictionary's entries (K copies, each perturbed by 1e-3 and its own substrates): the cost of a dictionary K
times as large, e.g. K = 2 for recipe v2's population (its larger timing grid does not matter here: the
dictionary is matched to the data's measurements first).

With --device gpu (the device machine, the [gpu] extra) the likelihood and the selection of the retained
entries run on the GPU (core/fitting/gpu.py) and the CPU estimate of the same voxels is checked against it
(largest difference); benchmarks/gpu_estimators.py measures both estimators on a GPU at 1e5 voxels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def selection_seconds(model, y, sigma) -> float:
    """Seconds the likelihood of every entry and the selection of the retained ones (posterior._select, the
    part with a GPU kernel) take for voxels y in the model's batches, on its device."""
    from dmrimc_bids.core.fitting.likelihood import noise_floor
    floor = noise_floor(sigma, model.n_averages)
    n = min(model.n_keep, len(model.signals) - 1)
    t0 = time.perf_counter()
    for c0 in range(0, len(y), model.chunk_size):
        part = slice(c0, c0 + model.chunk_size)
        model._select(np.ascontiguousarray(y[part]), floor[part], np.asarray(sigma[part], float) ** 2, None, n)
    return time.perf_counter() - t0


def scaled_copy(dic, k: int, rng):
    """A dictionary of k perturbed copies of dic's entries (each copy its own structures)."""
    from dmrimc_bids.core.dictionary import Dictionary
    from dmrimc_bids.core.fitting.posterior import structure_groups

    groups = dic.structure if dic.structure is not None else structure_groups(dic.params)
    sig = np.concatenate([dic.signals + (rng.normal(0, 1e-3, dic.signals.shape) if i else 0) for i in range(k)])
    params = np.concatenate([dic.params] * k)
    structure = np.concatenate([groups + i * (groups.max() + 1) for i in range(k)])
    return Dictionary(sig.astype(np.float32), params, dic.names, dic.protocol, dic.units, dic.provenance, structure)


def joint_case(n_voxels: int, rng, cache: Path):
    """(JointModel, y [V, M], σ [V]): the app's joint fit on the demo's shells (b > 20 s/mm², both diffusion
    times and echo times) with the embedded tissue dictionary and the default flow dictionary (generated
    networks, cached in ``cache``); voxels (1 - fV)·tissue entry + fV·flow entry, fV ~ U(0.01, 0.15), Rician
    noise σ = 0.02."""
    from dmrimc_bids.core.dictionary_default import default_dictionary
    from dmrimc_bids.core.fitting.joint import JointModel
    from dmrimc_bids.core.phantom import demo_shells
    from dmrimc_bids.core.simulate.flow.dictionary import flow_dictionary_for_protocol
    from dmrimc_bids.options import DEFAULT_POINT_PRIOR

    shells = demo_shells()
    prot = shells.subset(np.flatnonzero(shells.b > 20))
    flow = flow_dictionary_for_protocol(prot, cache)[1].match(prot).select()
    tissue = default_dictionary().match(prot).select()
    it, iv = rng.integers(0, len(tissue), n_voxels), rng.integers(0, len(flow), n_voxels)
    fv = rng.uniform(0.01, 0.15, n_voxels)[:, None]
    clean = (1 - fv) * tissue.signals[it] + fv * flow.signals[iv]
    y = np.hypot(clean + rng.normal(0, 0.02, clean.shape), rng.normal(0, 0.02, clean.shape))
    return JointModel(tissue, flow, point_prior=DEFAULT_POINT_PRIOR), y, np.full(n_voxels, 0.02)


def product_bound(y: np.ndarray, signals: np.ndarray, threads: int, repeats: int, block: int = 2000) -> dict:
    """The machine's bound for a likelihood over every entry: voxels/s of the product Y @ T alone (numpy's
    BLAS at ``threads`` threads, blocks of ``block`` voxels, the entries' [E, M] table transposed once),
    float32 and float64, median of ``repeats`` runs."""
    from threadpoolctl import threadpool_limits

    out = {}
    for dtype in (np.float32, np.float64):
        t_t, yy = np.ascontiguousarray(signals.T, dtype), np.ascontiguousarray(y, dtype)
        out_block = np.empty((min(block, len(yy)), t_t.shape[1]), dtype)
        runs = []
        with threadpool_limits(limits=threads):
            for _ in range(repeats):
                t0 = time.perf_counter()
                for c0 in range(0, len(yy), block):
                    part = yy[c0:c0 + block]
                    np.matmul(part, t_t, out=out_block[:len(part)])
                runs.append(len(yy) / (time.perf_counter() - t0))
        out[np.dtype(dtype).name] = round(float(np.median(runs)), 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("posterior", "joint"), default="posterior",
                    help="the default tissue posterior, or the joint tissue + vascular fit (the app's default model)")
    ap.add_argument("--voxels", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--point", choices=("median", "mean"), default="median")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--size-factor", type=int, default=1, help="copies of the dictionary's entries (perturbed)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "dmrimc-bids" / "throughput",
                    help="where the joint case's flow dictionary is cached")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from dmrimc_bids.core.dictionary_default import default_dictionary
    from dmrimc_bids.core.fitting.posterior import PosteriorModel, posterior_chunk
    from dmrimc_bids.core.protocol import Protocol
    from dmrimc_bids.options import DEFAULT_POINT_PRIOR

    import numba
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    rng = np.random.default_rng(0)
    if args.model == "joint":
        model, y, sigma = joint_case(args.voxels, rng, args.cache)
        entries = model.tissue_signals   # the tissue candidates' misfit: a product over every tissue entry
    else:
        b = [450, 600, 1050, 1500, 1950, 2550] * 2
        prot = Protocol(b, [10.0] * 6 + [15.0] * 6, [25.0] * 6 + [45.0] * 6)
        dic = default_dictionary().match(prot).select()
        y = dic.signals[rng.integers(0, len(dic), args.voxels)].astype(float) + rng.normal(0, 0.02, (args.voxels, 12))
        if args.size_factor > 1:
            dic = scaled_copy(dic, args.size_factor, rng)
        sigma = np.full(args.voxels, 0.02)
        model = PosteriorModel(dic, chunk_size=posterior_chunk(10000, len(dic)), point=args.point,
                               device=args.device, point_prior=DEFAULT_POINT_PRIOR)
        entries = model.signals
    blas = max(1, model.blas_threads(args.threads))   # as the app's fit (interfaces/fitting.run_fit)
    with threadpool_limits(limits=blas):
        model.fit(y[:500], sigma=sigma[:500])   # compilation (cached after the first run) and the model error
    runs = []
    with threadpool_limits(limits=blas):
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fit = model.fit(y, sigma=sigma)
            runs.append(args.voxels / (time.perf_counter() - t0))
    label = "joint" if args.model == "joint" else f"posterior {args.point}"
    res = {"model": args.model, "voxels": args.voxels, "entries": int(len(entries)), "measurements": int(y.shape[1]),
           "threads": args.threads, "point": args.point, "device": model.device,
           "voxels_per_s": round(float(np.median(runs)), 1), "runs": [round(r, 1) for r in runs]}
    res["product_bound_voxels_per_s"] = product_bound(y, entries, args.threads, args.repeats)
    res["ratio_to_bound"] = {k: round(res["voxels_per_s"] / v, 3) for k, v in res["product_bound_voxels_per_s"].items()}
    if args.model == "posterior":
        with threadpool_limits(limits=args.threads):
            res["selection_share"] = round(selection_seconds(model, y, sigma) * res["voxels_per_s"] / args.voxels, 3)
    if args.device == "gpu" and args.model == "posterior":   # the GPU likelihood must not change the estimates
        cpu = PosteriorModel(dic, chunk_size=model.chunk_size, point=args.point).fit(y, sigma=sigma)
        res["max_abs_difference_vs_cpu"] = {k: float(np.nanmax(np.abs(fit.params[k] - cpu.params[k])))
                                            for k in fit.params}
    bound = res["product_bound_voxels_per_s"]
    print(f"{label} on the {model.device}: {res['voxels_per_s']:.0f} voxels/s ({len(entries)} entries, "
          f"{args.threads} threads); the product Y @ T alone: {bound['float32']:.0f} (float32), "
          f"{bound['float64']:.0f} (float64) voxels/s: ratio {res['ratio_to_bound']['float32']:.2f}, "
          f"{res['ratio_to_bound']['float64']:.2f}")
    if args.record and args.device == "cpu":
        sys.path.insert(0, str(HERE))
        from _record import machine, record
        ratios = (f"The machine's bound, the likelihood of every entry as the blocked product Y @ T alone (numpy's "
                  f"BLAS, {args.threads} threads, blocks of 2,000 voxels, same voxels and entries, same run): "
                  f"{bound['float32']:.0f} voxels/s in float32, {bound['float64']:.0f} in float64; the estimate "
                  f"runs at {res['ratio_to_bound']['float32']:.2f} and {res['ratio_to_bound']['float64']:.2f} of "
                  "them.")
        command = ("`python benchmarks/posterior_throughput.py" + (" --model joint" if args.model == "joint" else "")
                   + f" --voxels {args.voxels} --threads {args.threads} --repeats {args.repeats}"
                   + (f" --size-factor {args.size_factor}" if args.size_factor > 1 else "")
                   + f" --record` ({machine()}): ")
        if args.model == "joint":
            record("joint-throughput", command + (
                f"the joint tissue + vascular fit (the app's default model, default point priors) on the demo's "
                f"{y.shape[1]} diffusion-weighted shells, the embedded tissue dictionary ({len(entries)} entries) "
                f"and the default flow dictionary ({len(model.flow_signals)} generated networks); voxels mix a "
                "tissue and a flow entry with fV ~ U(0.01, 0.15), Rician σ = 0.02: "
                f"**{res['voxels_per_s']:.0f} voxels/s** (runs {res['runs']}), i.e. about "
                f"{1e5 / res['voxels_per_s']:.0f} s for 1e5 voxels. " + ratios))
        else:
            record(f"posterior-throughput-{args.point}" + (f"-x{args.size_factor}" if args.size_factor > 1 else ""),
                   command + (
                f"the default tissue estimate (posterior {args.point}, the default point priors) over {len(dic)} "
                "entries"
                + (f" ({args.size_factor} perturbed copies of the embedded dictionary's: the size of recipe v2)"
                   if args.size_factor > 1 else " (the embedded dictionary)")
                + " matched to the demo's 12 measurements: "
                f"**{res['voxels_per_s']:.0f} voxels/s** (runs {res['runs']}), i.e. about "
                f"{1e5 / res['voxels_per_s']:.0f} s for 1e5 voxels; the published tool fits 1.09 voxels/s "
                "(shared/reference/README.md). The likelihood with the selection of the retained entries "
                f"(posterior._select) takes {100 * res['selection_share']:.0f} % of the time; the regression "
                "adjustment, the weighted median and the local model error the rest. " + ratios))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
