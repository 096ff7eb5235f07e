#!/usr/bin/env python
"""The posterior and joint estimators on a GPU (issue #32): agreement with the CPU, and 1e5-voxel timings.

Run once on the device machine (numba with CUDA, the package from the working tree), then record here:

    python benchmarks/gpu_estimators.py run --out $OUT/gpu_estimators.json [--voxels 100000]   # device
    python benchmarks/gpu_estimators.py record gpu_estimators.json --machine "one NVIDIA H200 ..."

Voxels: entries of the embedded default dictionary matched to the demo's measurements (b 25-2550 s/mm²,
two diffusion times), mixed with flow-dictionary signals (fV 0-0.2) for the joint fit, Gaussian noise of
σ = 0.02 (SNR 50). Timings need no held-out data, so no held-out tissue is simulated here.

1. Posterior (the default tissue estimate, the default point priors) on the b >= 250 s/mm² measurements:
   PosteriorModel(device='gpu') against device='cpu' on every CPU core of the same machine: seconds for
   --voxels voxels (models built and warmed up first; median of --repeats), and the largest |GPU - CPU|
   of each parameter as a fraction of its range.
2. Joint fit (JointModel, every measurement): the same, on the same voxels.
3. The verdict for `--device auto` (core/fitting/dictfit.AUTO_USES_GPU): the GPU only where it was faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

#: Targets of issue #32 for 1e5 voxels [s].
TARGET_S = {"posterior": 2.0, "joint": 5.0}


def voxels(n: int, seed: int = 1) -> tuple:
    """(protocol of the fitted measurements, tissue dictionary, flow dictionary, y [n, M], σ [n])."""
    from dmrimc_bids.core.dictionary_default import default_dictionary
    from dmrimc_bids.core.phantom import demo_shells
    from dmrimc_bids.core.simulate.flow.dictionary import flow_dictionary_for_protocol

    prot = demo_shells()
    prot = prot.subset(np.flatnonzero(prot.b > 20))
    tissue = default_dictionary().match(prot)
    flow = flow_dictionary_for_protocol(prot, Path(tempfile.gettempdir()) / "dmrimc_gpu_estimators")
    flow = flow[1] if isinstance(flow, tuple) else flow
    rng = np.random.default_rng(seed)
    it, iv, fv = rng.integers(0, len(tissue), n), rng.integers(0, len(flow), n), rng.uniform(0.0, 0.2, n)
    y = (1 - fv[:, None]) * tissue.signals[it] + fv[:, None] * flow.signals[iv] + rng.normal(0, 0.02, (n, len(prot)))
    return prot, tissue, flow, np.abs(y), np.full(n, 0.02)


def timed(fit, repeats: int) -> tuple:
    """(median seconds, every run's seconds, the last result) of fit()."""
    runs, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fit()
        runs.append(time.perf_counter() - t0)
    return float(np.median(runs)), [round(r, 3) for r in runs], out


def largest_differences(gpu: dict, cpu: dict, ranges: dict) -> dict:
    """Largest |GPU - CPU| of each estimate as a fraction of its dictionary range."""
    return {k: float(np.nanmax(np.abs(np.asarray(gpu[k], float) - np.asarray(cpu[k], float))) / ranges[k])
            for k in ranges if k in gpu and k in cpu}


def run(n: int, repeats: int, devices=("gpu", "cpu")) -> dict:
    """The figures of both estimators; devices: the (accelerated, reference) pair (('cpu', 'cpu'): a dry run
    of this script on a machine without a GPU)."""
    from dmrimc_bids.core.fitting.joint import FV_MAX, JointModel
    from dmrimc_bids.core.fitting.posterior import PosteriorModel
    from dmrimc_bids.options import DEFAULT_POINT_PRIOR

    prot, tissue, flow, y, sigma = voxels(n)
    cols = np.flatnonzero(prot.b >= 250)
    res = {"voxels": n, "entries": len(tissue), "flow_entries": len(flow), "measurements": len(prot),
           "tissue_measurements": int(cols.size), "cpus": os.cpu_count(),
           "host": f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}"}
    t_ranges = {k: float(np.ptp(tissue.params[:, j])) for j, k in enumerate(tissue.names)}
    f_ranges = {f"vascular:{k}": float(np.ptp(flow.params[:, j])) for j, k in enumerate(flow.names)}
    f_ranges["vascular:fV"] = FV_MAX
    cases = {"posterior": lambda device: PosteriorModel(tissue.measurements(cols), device=device,
                                                          point_prior=DEFAULT_POINT_PRIOR),
             "joint": lambda device: JointModel(tissue, flow, device=device, point_prior=DEFAULT_POINT_PRIOR)}
    for name, make in cases.items():
        data = y[:, cols] if name == "posterior" else y
        maps = {}
        for key, device in zip(("gpu", "cpu"), devices):
            model = make(device)
            model.fit(data[:2000], sigma=sigma[:2000])   # compilation, the model error, resident signals
            sec, runs, fit = timed(lambda: model.fit(data, sigma=sigma), repeats if key == "gpu" else 1)
            res[f"{name}_{key}"] = {"seconds": round(sec, 3), "runs": runs, "voxels_per_s": round(n / sec, 1),
                                       "device": (fit.tissue if name == "joint" else fit).info["device"]}
            maps[key] = fit.maps()
        res[f"{name}_max_difference"] = largest_differences(maps["gpu"], maps["cpu"],
                                                            {**t_ranges, **(f_ranges if name == "joint" else {})})
    return res


def render(res: dict, machine: str) -> str:
    lines = [f"`python benchmarks/gpu_estimators.py run --out R.json --voxels {res['voxels']}` on the device machine "
             f"({machine}; host side {res['host']}), recorded with `python benchmarks/gpu_estimators.py record R.json "
             f"--machine ...`. {res['voxels']} voxels of the embedded dictionary ({res['entries']} entries) mixed "
             f"with {res['flow_entries']} flow entries, SNR 50; the posterior on the {res['tissue_measurements']} "
             f"measurements with b >= 250 s/mm², the joint fit on all {res['measurements']}.", "",
             "| estimator | GPU s (runs) | CPU s, all cores | GPU / CPU | target | largest GPU-CPU difference / range |",
             "|---|---|---|---|---|---|"]
    verdict = {}
    for name in ("posterior", "joint"):
        g, c = res[f"{name}_gpu"], res[f"{name}_cpu"]
        scale = 1e5 / res["voxels"]
        diff = max(res[f"{name}_max_difference"].values())
        verdict[name] = g["seconds"] < c["seconds"]
        lines.append(f"| {name} | {g['seconds']} ({g['runs']}) | {c['seconds']} | {c['seconds'] / g['seconds']:.1f}x "
                     f"| 1e5 voxels in {TARGET_S[name]:g} s: {'met' if g['seconds'] * scale <= TARGET_S[name] else 'NOT met'} "
                     f"| {diff:.1e} |")
    lines += ["", "`--device auto` should take the GPU for: "
              + (", ".join(k for k, v in verdict.items() if v) or "neither") + " (dictfit.AUTO_USES_GPU)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--voxels", type=int, default=100_000)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--devices", nargs=2, default=["gpu", "cpu"], help="('cpu', 'cpu': a dry run without a GPU)")
    rec = sub.add_parser("record")
    rec.add_argument("result", type=Path)
    rec.add_argument("--machine", required=True, help="the device machine, in words")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        res = run(args.voxels, args.repeats, tuple(args.devices))
        args.out.write_text(json.dumps(res, indent=1))
        print(json.dumps(res))
        return 0
    from _record import record
    record("gpu-estimators", render(json.loads(args.result.read_text()), args.machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
