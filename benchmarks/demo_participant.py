#!/usr/bin/env python
"""Participant run on the demo dataset: wall time (median of --repeats cold runs: a new process and a new
work dir each, from start to the subject report) and recovered-vs-true median absolute error per parameter
inside the tumour mask (vascular maps: also Spearman ρ; vm, vs, anb over the voxels the flow fit ran on,
exit code 1). --participant-label 01 times one subject; --clear-numba-cache also deletes numba's on-disk
compiled kernels before every run (the very first run after an install). Last line: one JSON object.

    python benchmarks/demo_participant.py [--repeats 3] [--nprocs 2] [--participant-label 01] [--clear-numba-cache]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.stats import spearmanr

PARAMS = ("fin", "vCScyl", "D0in", "D0ex", "kappa")  # BIDS labels (no underscore)
VASCULAR = (("ivim", "fV"), ("spinflowsim", "vm"), ("spinflowsim", "vs"), ("spinflowsim", "anb"))


def recovery(out: Path, demo: Path) -> dict:
    gt_root = demo / "derivatives" / "groundtruth"
    res = {}
    for mask_file in sorted(gt_root.rglob("*_desc-tumour_mask.nii.gz")):
        base = mask_file.name.split("_desc-")[0]
        rel = mask_file.parent.relative_to(gt_root)
        mask = nib.load(mask_file).get_fdata() > 0
        row = {}
        for p in PARAMS:
            name = f"{base}_space-dwi_model-histousim_param-{p}_dwimap.nii.gz"
            t = nib.load(gt_root / rel / name).get_fdata()[mask]
            e = nib.load(out / rel / name).get_fdata()[mask]
            row[p] = {"medae": round(float(np.median(np.abs(e - t))), 4), "bias": round(float(np.mean(e - t)), 4)}
        code = nib.load(out / rel / f"{base}_space-dwi_model-spinflowsim_param-exitcode_dwimap.nii.gz").get_fdata()
        for model, p in VASCULAR:
            name = f"{base}_space-dwi_model-{model}_param-{p}_dwimap.nii.gz"
            sel = mask if model == "ivim" else mask & (code == 1)
            t = nib.load(gt_root / rel / name).get_fdata()[sel]
            e = nib.load(out / rel / name).get_fdata()[sel]
            row[p] = {"medae": round(float(np.median(np.abs(e - t))), 4), "bias": round(float(np.mean(e - t)), 4),
                      "rho": round(float(spearmanr(e, t)[0]), 3), "voxels": int(sel.sum())}
        res[base] = row
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--participant-label", nargs="+", default=None)
    ap.add_argument("--clear-numba-cache", action="store_true")
    args = ap.parse_args(argv)
    import dmrimc_bids
    pkg = Path(dmrimc_bids.__file__).parent
    label = ["--participant-label", *args.participant_label] if args.participant_label else []
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo"
        subprocess.run([sys.executable, "-m", "dmrimc_bids.cli.demo", str(demo)], check=True, capture_output=True)
        for i in range(args.repeats):
            out = Path(tmp) / f"out{i}"
            if args.clear_numba_cache:
                for f in [*pkg.rglob("__pycache__/*.nbi"), *pkg.rglob("__pycache__/*.nbc")]:
                    f.unlink()
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dmrimc_bids.cli.run", str(demo), str(out), "participant",
                            "--nprocs", str(args.nprocs), *label], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
            reports = sorted(p.name for p in out.glob("sub-*.html"))
            assert reports, "no subject report was written"
        rec = recovery(out, demo) if not args.participant_label else {}
    for base, row in rec.items():
        print(base, " ".join(f"{p}: MedAE {v['medae']} bias {v['bias']:+}" + (f" rho {v['rho']}" if "rho" in v else "")
                             for p, v in row.items()))
    what = f"sub-{', '.join(args.participant_label)}" if args.participant_label else "3 subject/sessions"
    cache = "numba cache cleared" if args.clear_numba_cache else "numba cache kept"
    print(f"wall time ({what}, cold start to report, {cache}, nprocs {args.nprocs}): runs "
          f"{[round(t, 1) for t in times]} s, median {np.median(times):.1f} s")
    print(json.dumps({"recovery": rec, "wall_s": [round(t, 2) for t in times],
                      "wall_s_median": round(float(np.median(times)), 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
