#!/usr/bin/env python
"""Build the default dictionary on a GPU (issue #17), then assemble and record it on this machine.

Three steps (the GPU machine has numba.cuda but no Nipype, so the build calls, substrate by substrate,
the function that the workflow's SimulateScaled node calls: core.simulate.histo.simulate_scaled_substrate,
with the default population, design, timing grid and seeds of ``dmrimc-sim default-dictionary``):

    python benchmarks/default_dictionary_gpu.py reference REF.json           # here, on the CPU
    python benchmarks/default_dictionary_gpu.py build OUTDIR --reference REF.json --budget-s 420
    python benchmarks/default_dictionary_gpu.py assemble OUTDIR [--out NPZ] [--record]
    python benchmarks/default_dictionary_gpu.py cpu-time [--walkers 8000] [--sample 0 32 64 96] [--record]

``reference`` walks a small permeable case on the CPU; ``build`` first walks it on the GPU (the walks
share their random streams, so the signals must agree to within a few 1e-3) and stops if they do not.
It then times substrate 0 at 16,000 walkers and picks the largest walker count in --walkers-choices
whose projected build fits --budget-s, simulates every substrate and writes the parts
(``parts_K.npz``: float16 signals, parameters, per-substrate facts) and ``build.json`` (device, walkers,
seconds). ``assemble`` makes the dictionary from the parts exactly as the workflow's AssembleDictionary
does, with the provenance of ``dmrimc-sim default-dictionary``, and with --record writes the build
figures into docs/benchmarks.md. ``cpu-time`` times the same per-substrate jobs on this machine (two
single-thread jobs at a time, as ``dmrimc-sim default-dictionary --nprocs 2 --threads-per-job 1`` runs them)
for a sample of the substrates and projects the 2-core build time of the whole population. The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
CHECK = {"walkers": 4000, "ratio": 1.0, "kappa_per_d0": [10.0], "d0": [1.0, 2.5], "seed": 7}
PER_PART = 32


def _check_case():
    from dmrimc_bids.core import dictionary_default as dd
    from dmrimc_bids.core.protocol import Protocol
    from dmrimc_bids.core.simulate.histo import load_substrate

    sub = load_substrate(dd.default_substrate_specs()[0])
    prot = Protocol([600.0, 1800.0, 3000.0], [8.0, 15.0, 26.0], [18.0, 36.0, 72.0])
    return sub, prot


def reference(path: Path) -> dict:
    from dmrimc_bids.core.simulate import scaled

    sub, prot = _check_case()
    s = scaled.permeable_signals(sub, prot, CHECK["d0"], CHECK["ratio"], CHECK["kappa_per_d0"],
                                 n_walkers=CHECK["walkers"], seed=CHECK["seed"], device="cpu")
    out = {"case": CHECK, "signals": np.asarray(s).tolist()}
    path.write_text(json.dumps(out) + "\n")
    return out


def gpu_check(ref: dict, device: str = "gpu") -> dict:
    from dmrimc_bids.core.simulate import scaled

    sub, prot = _check_case()
    t0 = time.perf_counter()
    s = scaled.permeable_signals(sub, prot, CHECK["d0"], CHECK["ratio"], CHECK["kappa_per_d0"],
                                 n_walkers=CHECK["walkers"], seed=CHECK["seed"], device=device)
    diff = float(np.max(np.abs(np.asarray(s) - np.asarray(ref["signals"]))))
    return {"max_abs_diff_vs_cpu": diff, "seconds_incl_compile": round(time.perf_counter() - t0, 2),
            "ok": diff < 5e-3}


def _simulate(specs, i, walkers, args, device):
    from dmrimc_bids.core import dictionary_default as dd
    from dmrimc_bids.core.simulate.histo import load_substrate, simulate_scaled_substrate

    sub = load_substrate(specs[i])
    sig, par, facts = simulate_scaled_substrate(sub, dd.DEFAULT_TIMING_GRID.protocol(), dd.DEFAULT_DESIGN,
                                                n_walkers=walkers, step_um=args.step_um, seed=args.seed, index=i,
                                                area=dd.DEFAULT_METRICS_AREA, device=device)
    facts["spec"] = specs[i]
    return sig, par, facts


def _save_part(out: Path, k: int, parts: list) -> None:
    tmp = out / f".parts_{k}.tmp.npz"
    np.savez_compressed(tmp, signals=np.concatenate([p[0] for p in parts]).astype(np.float16),
                        params=np.concatenate([p[1] for p in parts]), counts=np.array([len(p[0]) for p in parts]),
                        facts=json.dumps([p[2] for p in parts]))
    tmp.replace(out / f"parts_{k}.npz")


def build(args) -> dict:
    from dmrimc_bids.core import dictionary_default as dd

    t_start = time.perf_counter()
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    check = gpu_check(json.loads(Path(args.reference).read_text()), args.device)
    print(f"GPU check: {check}", flush=True)
    summary = {"check": check, "device": args.device_name}
    if not check["ok"]:
        summary["error"] = "GPU signals differ from the CPU reference"
        (out / "build.json").write_text(json.dumps(summary, indent=1))
        return summary
    specs = dd.default_substrate_specs(args.substrates, args.seed)
    t0 = time.perf_counter()
    first = _simulate(specs, 0, args.pilot_walkers, args, args.device)
    t_pilot = time.perf_counter() - t0
    left = args.budget_s - (time.perf_counter() - t_start)
    fits = [n for n in args.walkers_choices
            if t_pilot * max(n / args.pilot_walkers, 0.6) * len(specs) * 1.15 <= left]
    walkers = max(fits) if fits else min(args.walkers_choices)
    print(f"substrate 0 at {args.pilot_walkers} walkers: {t_pilot:.1f} s; {left:.0f} s left -> {walkers} walkers",
          flush=True)
    summary.update(pilot={"walkers": args.pilot_walkers, "seconds": round(t_pilot, 2)}, walkers=walkers)
    parts, done, t_build = [], 0, time.perf_counter()
    seconds = []
    for i in range(len(specs)):
        if i == 0 and walkers == args.pilot_walkers:
            part = first
        else:
            t1 = time.perf_counter()
            part = _simulate(specs, i, walkers, args, args.device)
            part[2]["seconds"] = round(time.perf_counter() - t1, 3)
        seconds.append(part[2]["seconds"])
        parts.append(part)
        done += 1
        if len(parts) == PER_PART or i == len(specs) - 1:
            _save_part(out, i // PER_PART, parts)
            parts = []
            print(f"{done}/{len(specs)} substrates, {time.perf_counter() - t_build:.0f} s", flush=True)
        if time.perf_counter() - t_start > args.budget_s + 60 and i < len(specs) - 1:
            _save_part(out, i // PER_PART, parts) if parts else None
            summary["stopped_early"] = done
            break
    summary.update(n_substrates=len(specs), done=done, build_seconds=round(time.perf_counter() - t_build, 1),
                   seconds_per_substrate_median=float(np.median(seconds)), step_um=args.step_um, seed=args.seed)
    (out / "build.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def assemble(args) -> dict:
    from dmrimc_bids.core import dictionary_default as dd
    from dmrimc_bids.core.simulate.histo import assemble as assemble_parts, provenance

    src = Path(args.outdir)
    summary = json.loads((src / "build.json").read_text())
    parts, facts = [], []
    for f in sorted(src.glob("parts_*.npz"), key=lambda p: int(p.stem.split("_")[1])):
        z = np.load(f)
        sig, par, counts = z["signals"].astype(np.float32), z["params"], z["counts"]
        edges = np.concatenate([[0], np.cumsum(counts)])
        parts += [(sig[a:b], par[a:b]) for a, b in zip(edges[:-1], edges[1:])]
        facts += json.loads(str(z["facts"]))
    if len(parts) != summary["n_substrates"]:
        raise SystemExit(f"{len(parts)} of {summary['n_substrates']} substrates were built; not assembling")
    prot = dd.DEFAULT_TIMING_GRID.protocol()
    dic = assemble_parts(parts, prot, provenance(facts, summary["seed"], dd.DEFAULT_METRICS_AREA))
    dic.provenance.update(timing_grid=dd.DEFAULT_TIMING_GRID.describe(), design=dd.DEFAULT_DESIGN,
                          population={"n_substrates": summary["n_substrates"], "seed": summary["seed"],
                                      "generator": "core.dictionary_default.default_substrate_specs"},
                          build={"wall_seconds": summary["build_seconds"], "device": "gpu",
                                 "machine": summary["device"], "script": "benchmarks/default_dictionary_gpu.py"})
    out = Path(args.out or dd.default_dictionary_path())
    dd.finalise_default(dic, out)
    size = out.stat().st_size + out.with_suffix(".json").stat().st_size
    res = {"entries": len(dic), "measurements": len(dic.protocol), "walkers": summary["walkers"],
           "build_seconds": summary["build_seconds"], "seconds_per_substrate_median":
           summary["seconds_per_substrate_median"], "size_mb": round(size / 1e6, 1), "device": summary["device"],
           "gpu_check": summary["check"], "pilot": summary.get("pilot", {})}
    if args.record:
        _record(res)
    return res


def _time_one(job):
    import numba

    numba.set_num_threads(1)
    from types import SimpleNamespace

    from dmrimc_bids.core import dictionary_default as dd

    i, walkers = job
    t0 = time.perf_counter()
    _simulate(dd.default_substrate_specs(), i, walkers, SimpleNamespace(step_um=0.75, seed=dd.DEFAULT_SEED), "cpu")
    return time.perf_counter() - t0


def cpu_time(args) -> dict:
    import multiprocessing as mp
    import platform

    from dmrimc_bids.core import dictionary_default as dd

    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_time_one, [(1, 50), (2, 50)])  # compile the kernels in each worker first
        seconds = pool.map(_time_one, [(i, args.walkers) for i in args.sample])
    n = dd.DEFAULT_N_SUBSTRATES
    res = {"walkers": args.walkers, "sample": list(args.sample), "seconds": [round(x, 1) for x in seconds],
           "median_s": round(float(np.median(seconds)), 1),
           "projected_build_min_2_jobs": round(float(np.median(seconds)) * n / 2 / 60, 1),
           "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cpus"}
    if args.record:
        from _record import record
        record(f"default-dictionary-cpu-{args.walkers}", (
            f"`python benchmarks/default_dictionary_gpu.py cpu-time --walkers {args.walkers} --sample "
            f"{' '.join(map(str, args.sample))} --record` ({res['machine']}): substrates {res['sample']} of the default "
            f"population at {args.walkers} walkers per walk, two single-thread jobs at a time: {res['seconds']} s "
            f"(median {res['median_s']} s), so the 2-core build of all {n} substrates "
            f"(`dmrimc-sim default-dictionary --walkers {args.walkers} --nprocs 2 --threads-per-job 1 --device cpu`) "
            f"takes about **{res['projected_build_min_2_jobs']:.0f} min** (projected from the sample)."))
    return res


def _record(res: dict) -> None:
    from _record import record

    c = res["gpu_check"]
    record("default-dictionary-gpu", "".join([
        f"`python benchmarks/default_dictionary_gpu.py build OUT --reference REF.json --budget-s 390` on the device "
        f"machine ({res['device']}), then `... assemble OUT --record` here. Substrate 0 at "
        f"{res['pilot'].get('walkers')} walkers took {res['pilot'].get('seconds')} s, so the budget chose "
        f"{res['walkers']}: the default population (128 substrates), design and timing "
        f"grid, **{res['walkers']} walkers per walk**, all on the GPU (numba.cuda): **{res['build_seconds']:.0f} s** "
        f"for the whole dictionary (median {res['seconds_per_substrate_median']:.2f} s per substrate); "
        f"{res['entries']} entries x {res['measurements']} measurements, {res['size_mb']} MB on disk (npz + json). "
        f"Before the build the GPU walked a small permeable case that the CPU walked here with the same random "
        f"streams: largest difference {c['max_abs_diff_vs_cpu']:.1e} in signal (first GPU call, compilation "
        f"included: {c['seconds_incl_compile']:.0f} s)."]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reference")
    r.add_argument("path", type=Path)
    b = sub.add_parser("build")
    b.add_argument("outdir", type=Path)
    b.add_argument("--reference", type=Path, required=True)
    b.add_argument("--budget-s", type=float, default=420.0)
    b.add_argument("--pilot-walkers", type=int, default=16000)
    b.add_argument("--walkers-choices", type=int, nargs="+", default=[8000, 12000, 16000, 24000, 32000, 48000, 64000])
    b.add_argument("--substrates", type=int, default=128)
    b.add_argument("--seed", type=int, default=2026)
    b.add_argument("--step-um", type=float, default=0.75)
    b.add_argument("--device-name", default="GPU machine")
    b.add_argument("--device", choices=("gpu", "cpu"), default="gpu", help="cpu: a dry run of the script")
    a = sub.add_parser("assemble")
    a.add_argument("outdir", type=Path)
    a.add_argument("--out", type=Path, default=None)
    a.add_argument("--record", action="store_true")
    c = sub.add_parser("cpu-time")
    c.add_argument("--walkers", type=int, default=8000)
    c.add_argument("--sample", type=int, nargs="+", default=[0, 32, 64, 96])
    c.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "cpu-time":
        res = cpu_time(args)
    elif args.cmd == "reference":
        res = reference(args.path)
    elif args.cmd == "build":
        res = build(args)
    else:
        res = assemble(args)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
