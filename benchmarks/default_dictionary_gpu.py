#!/usr/bin/env python
"""Build the default dictionary on a GPU (issue #17), then assemble and record it on this machine.

Three steps (the GPU machine has numba.cuda but no Nipype, so the build calls, substrate by substrate,
the function that the workflow's SimulateScaled node calls: core.simulate.histo.simulate_scaled_substrate,
with the default population, design, timing grid and seeds of ``dmrimc-sim default-dictionary``):

    python benchmarks/default_dictionary_gpu.py reference REF.json           # here, on the CPU
    python benchmarks/default_dictionary_gpu.py build OUTDIR --reference REF.json --budget-s 420 [--recipe v2]
    python benchmarks/default_dictionary_gpu.py build OUTDIR ... --walkers 8000 --parts 4 5 6 7   # next lease
    python benchmarks/default_dictionary_gpu.py assemble OUTDIR [--out NPZ] [--record]
    python benchmarks/default_dictionary_gpu.py cpu-time [--walkers 8000] [--sample 0 32 64 96] [--record]

``reference`` walks a small permeable case on the CPU; ``build`` first walks it on the GPU (the walks
share their random streams, so the signals must agree to within a few 1e-3) and stops if they do not.
It then times substrate 0 at 16,000 walkers and picks the largest walker count in --walkers-choices
whose projected build fits --budget-s, simulates every substrate and writes the parts
(``parts_K.npz``: float16 signals, parameters, per-substrate facts) and ``build_K.json`` (device, walkers,
seconds). A build is resumable across device leases: each part (PER_PART substrates) is written as soon as it is
done, ``build_K.json`` records the parts of one lease, and a later lease builds only the parts it is given
(``--parts``) at the walker count of the first (``--walkers``, no pilot); the parts of every lease are
gathered into one folder here. ``assemble`` makes the dictionary from the parts exactly as the workflow's AssembleDictionary
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


def _recipe(name: str):
    from dmrimc_bids.core import dictionary_default as dd
    return dd.RECIPES[name]


def _simulate(specs, i, walkers, args, device):
    from dmrimc_bids.core import dictionary_default as dd
    from dmrimc_bids.core.simulate.histo import load_substrate, simulate_scaled_substrate

    sub = load_substrate(specs[i])
    recipe = _recipe(getattr(args, "recipe", dd.SHIPPED_RECIPE))
    sig, par, facts = simulate_scaled_substrate(sub, recipe.timing_grid.protocol(), recipe.design,
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
    """The parts of one lease: the GPU check, the walker count (a pilot, unless --walkers), then every part of
    --parts (default: all) that OUTDIR does not hold yet, until --budget-s; build_<first part>.json says what
    this lease did."""
    from dmrimc_bids.core import dictionary_default as dd

    t_start = time.perf_counter()
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    check = gpu_check(json.loads(Path(args.reference).read_text()), args.device)
    print(f"GPU check: {check}", flush=True)
    recipe = _recipe(args.recipe)
    n = args.substrates or recipe.n_substrates
    specs = dd.default_substrate_specs(n, args.seed)
    per = args.per_part
    n_parts = -(-n // per)
    todo = [k for k in (args.parts if args.parts is not None else range(n_parts))
            if 0 <= k < n_parts and not (out / f"parts_{k}.npz").is_file()]
    summary = {"check": check, "device": args.device_name, "recipe": recipe.name, "n_substrates": n,
               "seed": args.seed, "step_um": args.step_um, "per_part": per, "parts_asked": todo}
    log = out / f"build_{todo[0] if todo else 'none'}.json"
    if not check["ok"] or not todo:
        summary["error" if not check["ok"] else "note"] = ("GPU signals differ from the CPU reference"
                                                           if not check["ok"] else "every part asked is built")
        log.write_text(json.dumps(summary, indent=1) + "\n")
        return summary
    walkers = args.walkers
    if walkers is None:   # the first lease: the largest walker count whose projected build fits the budget
        t0 = time.perf_counter()
        _simulate(specs, todo[0] * per, args.pilot_walkers, args, args.device)
        t_pilot = time.perf_counter() - t0
        left = args.budget_s - (time.perf_counter() - t_start)
        fits = [w for w in args.walkers_choices
                if t_pilot * max(w / args.pilot_walkers, 0.6) * n * 1.15 <= left]
        walkers = max(fits) if fits else min(args.walkers_choices)
        summary["pilot"] = {"walkers": args.pilot_walkers, "seconds": round(t_pilot, 2)}
        print(f"pilot at {args.pilot_walkers} walkers: {t_pilot:.1f} s; {left:.0f} s left -> {walkers} walkers",
              flush=True)
    summary.update(walkers=walkers, parts_done=[], seconds=[])
    t_build = time.perf_counter()
    for k in todo:
        parts = []
        for i in range(k * per, min((k + 1) * per, n)):
            t1 = time.perf_counter()
            part = _simulate(specs, i, walkers, args, args.device)
            part[2]["seconds"] = round(time.perf_counter() - t1, 3)
            summary["seconds"].append(part[2]["seconds"])
            parts.append(part)
        _save_part(out, k, parts)
        summary["parts_done"].append(k)
        summary["build_seconds"] = round(time.perf_counter() - t_build, 1)
        log.write_text(json.dumps(summary, indent=1) + "\n")   # after every part: a lease cut short keeps it
        print(f"part {k} done ({len(summary['parts_done'])}/{len(todo)}), {summary['build_seconds']:.0f} s", flush=True)
        if time.perf_counter() - t_start > args.budget_s:
            break
    summary["seconds_per_substrate_median"] = float(np.median(summary["seconds"]))
    log.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def assemble(args) -> dict:
    """The dictionary from the parts of every lease gathered in OUTDIR (build_*.json: one per lease), all of
    one recipe, seed and walker count."""
    from dmrimc_bids.core import dictionary_default as dd
    from dmrimc_bids.core.simulate.histo import assemble as assemble_parts, provenance

    src = Path(args.outdir)
    leases = [json.loads(f.read_text()) for f in sorted(src.glob("build_*.json"))]
    leases = [lease for lease in leases if lease.get("parts_done")]
    if not leases:
        raise SystemExit(f"no build_*.json with finished parts in {src}")
    first = leases[0]
    for key in ("recipe", "n_substrates", "seed", "walkers", "step_um", "per_part"):
        if any(lease.get(key) != first.get(key) for lease in leases):
            raise SystemExit(f"the leases' parts differ in {key}: {[lease.get(key) for lease in leases]}")
    parts, facts = [], []
    for f in sorted(src.glob("parts_*.npz"), key=lambda p: int(p.stem.split("_")[1])):
        z = np.load(f)
        sig, par, counts = z["signals"].astype(np.float32), z["params"], z["counts"]
        edges = np.concatenate([[0], np.cumsum(counts)])
        parts += [(sig[a:b], par[a:b]) for a, b in zip(edges[:-1], edges[1:])]
        facts += json.loads(str(z["facts"]))
    if len(parts) != first["n_substrates"]:
        raise SystemExit(f"{len(parts)} of {first['n_substrates']} substrates were built; not assembling")
    recipe = _recipe(first.get("recipe", "v1"))
    dic = assemble_parts(parts, recipe.timing_grid.protocol(), provenance(facts, first["seed"], dd.DEFAULT_METRICS_AREA))
    seconds = [x for lease in leases for x in lease["seconds"]]
    dic.provenance.update(timing_grid=recipe.timing_grid.describe(), design=recipe.design, recipe=recipe.name,
                          population={"n_substrates": first["n_substrates"], "seed": first["seed"],
                                      "generator": "core.dictionary_default.default_substrate_specs"},
                          build={"wall_seconds": round(sum(lease["build_seconds"] for lease in leases), 1),
                                 "leases": len(leases), "device": "gpu", "machine": first["device"],
                                 "script": "benchmarks/default_dictionary_gpu.py"})
    out = Path(args.out or dd.default_dictionary_path())
    dd.finalise_default(dic, out, recipe.storage_rank)
    size = out.stat().st_size + out.with_suffix(".json").stat().st_size
    res = {"recipe": recipe.name, "entries": len(dic), "measurements": len(dic.protocol), "walkers": first["walkers"],
           "build_seconds": dic.provenance["build"]["wall_seconds"], "leases": len(leases),
           "seconds_per_substrate_median": float(np.median(seconds)), "size_mb": round(size / 1e6, 1),
           "device": first["device"], "gpu_check": first["check"], "pilot": first.get("pilot", {}),
           "n_substrates": first["n_substrates"]}
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
    record("default-dictionary-gpu" + ("" if res["recipe"] == "v1" else f"-{res['recipe']}"), "".join([
        f"`python benchmarks/default_dictionary_gpu.py build OUT --reference REF.json --budget-s 390 --recipe "
        f"{res['recipe']}` on the device machine ({res['device']}; {res['leases']} lease(s)), then `... assemble OUT "
        f"--record` here. A pilot at {res['pilot'].get('walkers')} walkers took {res['pilot'].get('seconds')} s, so "
        f"the budget chose {res['walkers']}: recipe {res['recipe']} ({res['n_substrates']} substrates), "
        f"**{res['walkers']} walkers per walk**, all on the GPU (numba.cuda): **{res['build_seconds']:.0f} s** "
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
    b.add_argument("--walkers", type=int, default=None, help="a later lease: the first lease's walker count (no pilot)")
    b.add_argument("--parts", type=int, nargs="+", default=None, help="parts (--per-part substrates each) to build")
    b.add_argument("--per-part", type=int, default=PER_PART, help=f"substrates per part ({PER_PART}; the same in every lease)")
    b.add_argument("--recipe", default="v1", help="core/dictionary_default.RECIPES")
    b.add_argument("--substrates", type=int, default=None, help="default: the recipe's")
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
