#!/usr/bin/env python
"""The dictionary fit's CUDA path on real hardware: agreement with the CPU, and speed.

Run on the device machine (it needs numba with CUDA, numpy and scipy; the package from the working
tree on PYTHONPATH), then record here:

    python benchmarks/fit_gpu_check.py run --out result.json [--voxels 100000]   # on the GPU machine
    python benchmarks/fit_gpu_check.py record result.json --machine "one NVIDIA H100 ..."

1. Agreement: 5,000 voxels of the synthetic 4050-entry dictionary (benchmarks/synthetic_volume.py)
   with Rician noise at SNR 50, fitted by DictionaryModel(device='cpu') and (device='gpu'): the largest
   difference of each parameter, as a fraction of its range.
2. ``--device auto`` picks the GPU and gives the same maps.
3. Speed: synthetic_volume.run on the GPU and on every CPU core of the same machine (median of
   --repeats), so the ratio compares one machine's two devices.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def agreement(n_vox: int = 5000, seed: int = 1) -> dict:
    from synthetic_volume import NAMES, dictionary

    from dmrimc_bids.core.fitting.dictfit import DictionaryModel

    dic, source = dictionary(seed, Path("/nonexistent"))
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(dic.params), n_vox)
    clean = dic.signals[truth]
    noisy = np.hypot(clean + 0.02 * rng.standard_normal(clean.shape), 0.02 * rng.standard_normal(clean.shape))
    sigma = np.full(n_vox, 0.02)
    fits = {d: DictionaryModel(dic, device=d).fit(noisy, sigma=sigma) for d in ("cpu", "gpu", "auto")}
    lo, hi = dic.ranges()
    out = {"dictionary": source, "voxels": n_vox, "device_auto": fits["auto"].info["device"]}
    for j, k in enumerate(NAMES):
        span = max(hi[j] - lo[j], 1e-12)
        out[f"max_diff_{k}"] = float(np.nanmax(np.abs(fits["gpu"].params[k] - fits["cpu"].params[k])) / span)
        out[f"auto_equals_gpu_{k}"] = bool(np.array_equal(fits["auto"].params[k], fits["gpu"].params[k]))
    out["exitcodes_equal"] = bool(np.array_equal(fits["gpu"].exitcode, fits["cpu"].exitcode))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--voxels", type=int, default=100_000)
    r.add_argument("--repeats", type=int, default=3)
    rec = sub.add_parser("record")
    rec.add_argument("result", type=Path)
    rec.add_argument("--machine", required=True, help="the device machine, in words")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        from synthetic_volume import run
        res = {"agreement": agreement(), "machine": f"{platform.machine()}, {os.cpu_count()} cpus, "
                                                      f"Python {platform.python_version()}"}
        none = Path("/nonexistent")
        res["gpu"] = run(args.voxels, 1, args.repeats, 0, "local", 10000, none, "gpu")
        res["cpu"] = run(args.voxels, os.cpu_count(), args.repeats, 0, "local", 10000, none, "cpu")
        args.out.write_text(json.dumps(res, indent=1))
        print(json.dumps(res))
        return 0
    from _record import record
    res = json.loads(args.result.read_text())
    a, g, c = res["agreement"], res["gpu"], res["cpu"]
    diffs = ", ".join(f"{k[9:]} {a[k]:.1e}" for k in a if k.startswith("max_diff_"))
    lines = [f"`python benchmarks/fit_gpu_check.py run --out R.json --voxels {g['voxels']} --repeats "
             f"{len(g['seconds_all'])}` on the device machine ({args.machine}; host side {res['machine']}), "
             "recorded here with `python benchmarks/fit_gpu_check.py record R.json --machine ...`. Dictionary: "
             f"{g['dictionary']}, {g['entries']} entries x {g['measurements']} measurements, local surrogate, SNR 50.",
             "", "| device | threads | seconds (median) | runs | voxels/s |", "|---|---|---|---|---|"]
    for r in (g, c):
        lines.append(f"| {r['device']} | {r['threads']} | {r['seconds_median']} | {r['seconds_all']} | "
                     f"{r['voxels_per_s']:.0f} |")
    lines += ["", f"GPU / all CPU cores of the same machine: **{g['voxels_per_s'] / c['voxels_per_s']:.1f}x**. "
              f"Agreement on {a['voxels']} voxels, largest |GPU - CPU| as a fraction of each parameter's range: "
              f"{diffs}; exit codes equal: {a['exitcodes_equal']}; `--device auto` chose {a['device_auto']} and "
              f"gave the GPU's maps: {all(v for k, v in a.items() if k.startswith('auto_equals_gpu_'))}."]
    record("fit-gpu", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
