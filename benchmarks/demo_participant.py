#!/usr/bin/env python
"""Participant run on the demo dataset: wall time (median of --repeats cold runs: a new process and a new
work dir each, from start to the subject report) and recovered-vs-true median absolute error per parameter
inside the tumour mask (vascular maps: also Spearman ρ; vm, vs, anb over the voxels the flow fit ran on,
exit code 1). --participant-label 01 times one subject; --clear-numba-cache also deletes numba's on-disk
compiled kernels before every run (the very first run after an install). Last line: one JSON object.

    python benchmarks/demo_participant.py [--repeats 3] [--nprocs 2] [--participant-label 01] [--clear-numba-cache]
                                          [--record]

Tissue recovery per series on the fitted voxels (exit code 1): Spearman ρ, the number of distinct true levels,
MedAE and bias, and the MedAE as a fraction of the truth's range beside the best constant guess's (the truth's
median); and pooled over the three series: ρ, MedAE and the constant guess's MedAE. --record writes the tables (full run)
or the one-subject timing into
docs/benchmarks.md.
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
#: fV of the joint fit (the default model writes it among the spinflowsim maps); its truth is the ivim fV map.
JOINT_FV = ("spinflowsim", "fV")


def recovery(out: Path, demo: Path) -> dict:
    gt_root = demo / "derivatives" / "groundtruth"
    res = {}
    for mask_file in sorted(gt_root.rglob("*_desc-tumour_mask.nii.gz")):
        base = mask_file.name.split("_desc-")[0]
        rel = mask_file.parent.relative_to(gt_root)
        mask = nib.load(mask_file).get_fdata() > 0
        row = {}
        fitted = mask & (nib.load(out / rel / f"{base}_space-dwi_model-histousim_param-exitcode_dwimap.nii.gz")
                         .get_fdata() == 1)
        for p in PARAMS:
            name = f"{base}_space-dwi_model-histousim_param-{p}_dwimap.nii.gz"
            t = nib.load(gt_root / rel / name).get_fdata()[fitted]
            e = nib.load(out / rel / name).get_fdata()[fitted]
            span = float(np.ptp(t))
            row[p] = {"medae": round(float(np.median(np.abs(e - t))), 4),
                                                             "bias": round(float(np.mean(e - t)), 4),
                      "rho": round(float(spearmanr(e, t)[0]), 3), "levels": int(np.unique(t).size),
                      "medae_of_range": round(float(np.median(np.abs(e - t))) / span, 3),
                      "constant_of_range": round(float(np.median(np.abs(np.median(t) - t))) / span, 3),
                      "voxels": int(fitted.sum())}
        code = nib.load(out / rel / f"{base}_space-dwi_model-spinflowsim_param-exitcode_dwimap.nii.gz").get_fdata()
        for model, p in VASCULAR + (JOINT_FV,):
            name = f"{base}_space-dwi_model-{model}_param-{p}_dwimap.nii.gz"
            if (model, p) == JOINT_FV and not (out / rel / name).is_file():
                continue   # --model separate
            sel = mask if p == "fV" else mask & (code == 1)
            t = nib.load(gt_root / rel / name.replace(f"model-{model}_param-fV", "model-ivim_param-fV")).get_fdata()[sel]
            e = nib.load(out / rel / name).get_fdata()[sel]
            row[p if (model, p) != JOINT_FV else "fV_joint"] = {"medae": round(float(np.median(np.abs(e - t))), 4),
                                                               "bias": round(float(np.mean(e - t)), 4),
                      "rho": round(float(spearmanr(e, t)[0]), 3), "voxels": int(sel.sum())}
            if p == "fV":   # fV collapsed to 0: the voxels with true fV >= 0.02 that read fV < 0.01
                blood = t >= 0.02
                row[p if (model, p) != JOINT_FV else "fV_joint"]["collapsed"] = round(
                    float(np.mean(e[blood] < 0.01)) if blood.any() else float("nan"), 4)
        res[base] = row
    return res


def pooled(out: Path, demo: Path) -> dict:
    """Tissue recovery pooled over every series: ρ, MedAE and the constant guess's MedAE per parameter."""
    gt_root = demo / "derivatives" / "groundtruth"
    est, true = {p: [] for p in PARAMS}, {p: [] for p in PARAMS}
    for mask_file in sorted(gt_root.rglob("*_desc-tumour_mask.nii.gz")):
        base = mask_file.name.split("_desc-")[0]
        rel = mask_file.parent.relative_to(gt_root)
        mask = nib.load(mask_file).get_fdata() > 0
        for p in PARAMS:
            name = f"{base}_space-dwi_model-histousim_param-{p}_dwimap.nii.gz"
            true[p].append(nib.load(gt_root / rel / name).get_fdata()[mask])
            est[p].append(nib.load(out / rel / name).get_fdata()[mask])
    res = {}
    for p in PARAMS:
        e, t = np.concatenate(est[p]), np.concatenate(true[p])
        res[p] = {"rho": round(float(spearmanr(e, t)[0]), 3), "medae": round(float(np.median(np.abs(e - t))), 4),
                  "medae_constant": round(float(np.median(np.abs(np.median(t) - t))), 4), "voxels": int(t.size)}
    return res


def _record(res, args):
    from _record import machine, record

    from dmrimc_bids.core.phantom import DEMO_FLOW_SEED, N_DEMO_SUBSTRATES, SNR_B0

    if args.participant_label:
        record(f"demo-timing-{'-'.join(args.participant_label)}",
               f"`python benchmarks/demo_participant.py --participant-label {' '.join(args.participant_label)} "
               f"--repeats {args.repeats} --nprocs {args.nprocs} --record` ({machine()}): participant run of "
               f"sub-{', '.join(args.participant_label)} (cold start to report, numba cache kept, embedded "
               f"default dictionary): runs {res['wall_s']} s, **median {res['wall_s_median']:.1f} s**.")
        return
    lines = [f"`python benchmarks/demo_participant.py --repeats {args.repeats} --nprocs {args.nprocs} --record` "
             f"({machine()}). **How the demo is made** (`dmrimc_bids/core/phantom.py`, `cli/demo.py`): its tissue "
             f"signals are simulated directly (not by the default dictionary's diffusion-time scaling) in "
             f"{N_DEMO_SUBSTRATES} substrates of another generator than the dictionary's (elliptical cells with "
             "log-normal sizes on a jittered hexagonal lattice), laid out by smooth fields (fraction by depth, cell "
             "size by angle), each at three (D0in, D0ex, κ) of its own off the dictionary's grid; "
             f"SNR {SNR_B0:g} at b=0, two diffusion times (δ/Δ 10/25 and 15/45 ms) "
             "between the dictionary's timing nodes, a vascular compartment on top from generated capillary "
             f"networks of generator seed {DEMO_FLOW_SEED} (the default flow dictionary's are seed 0). Fitted with "
             "default options.",
             "", "Per series, fitted voxels: Spearman ρ, distinct true levels, and the median absolute error as a "
             "fraction of the truth's range (the best constant guess's in brackets):", "",
             "| series | " + " | ".join(f"{p} ρ | {p} levels | {p} MedAE/range (constant)" for p in PARAMS) + " |",
             "|---|" + "---|---|---|" * len(PARAMS)]
    for base, row in res["recovery"].items():
        lines.append(f"| {base} | " + " | ".join(
            f"{row[p]['rho']:.3f} | {row[p]['levels']} | {row[p]['medae_of_range']:.3f} ({row[p]['constant_of_range']:.3f})"
            for p in PARAMS) + " |")
    lines += ["", "Tissue maps pooled over the 3 series (tumour voxels):", "",
              "| parameter | ρ vs truth | MedAE | MedAE of a constant guess |", "|---|---|---|---|"]
    for p, v in res["pooled"].items():
        lines.append(f"| {p} | {v['rho']:.3f} | {v['medae']:.3g} | {v['medae_constant']:.3g} |")
    lines += ["", "| series | " + " | ".join(f"{p} MedAE (bias)" for p in PARAMS)
              + " | fV IVIM MedAE (ρ) | fV joint (headline) MedAE (ρ) | true fV >= 0.02 read < 0.01: IVIM, joint | vm MedAE (ρ) |",
              "|---|" + "---|" * (len(PARAMS) + 4)]
    fmt = lambda row, k: f"{row[k]['medae']:.3g} ({row[k]['rho']:.2f})" if k in row else "-"  # noqa: E731
    for base, row in res["recovery"].items():
        lines.append(f"| {base} | " + " | ".join(f"{row[p]['medae']:.3g} ({row[p]['bias']:+.2g})" for p in PARAMS)
                     + f" | {fmt(row, 'fV')} | {fmt(row, 'fV_joint')} | "
                     + ", ".join(f"{row[k]['collapsed']:.1%}" if k in row else "-" for k in ("fV", "fV_joint"))
                     + f" | {fmt(row, 'vm')} |")
    lines += ["", f"Demo creation (`dmrimc-bids-demo`, a new process, shipped tissue signals): {res['create_s']:.1f} s. "
                  f"Wall time, 3 series, cold start to report: runs {res['wall_s']} s, median "
                  f"{res['wall_s_median']:.1f} s."]
    record("demo-recovery", "\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--participant-label", nargs="+", default=None)
    ap.add_argument("--clear-numba-cache", action="store_true")
    ap.add_argument("--record", action="store_true", help="write the figures into docs/benchmarks.md")
    args = ap.parse_args(argv)
    import dmrimc_bids
    pkg = Path(dmrimc_bids.__file__).parent
    label = ["--participant-label", *args.participant_label] if args.participant_label else []
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dmrimc_bids.cli.demo", str(demo)], check=True, capture_output=True)
        create_s = time.perf_counter() - t0
        for i in range(args.repeats):
            out = Path(tmp) / f"out{i}"
            if args.clear_numba_cache:
                for f in [*pkg.rglob("__pycache__/*.nbi"), *pkg.rglob("__pycache__/*.nbc")]:
                    f.unlink()
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dmrimc_bids.cli.run", str(demo), str(out), "participant",
                            "--nprocs", str(args.nprocs), "--derivatives", str(demo / "derivatives" / "segmentation"),
                            *label], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
            reports = sorted(p.name for p in out.glob("sub-*.html"))
            assert reports, "no subject report was written"
        rec = recovery(out, demo) if not args.participant_label else {}
        pool = pooled(out, demo) if not args.participant_label else {}
    for base, row in rec.items():
        print(base, " ".join(f"{p}: MedAE {v['medae']} bias {v['bias']:+}" + (f" rho {v['rho']}" if "rho" in v else "")
                             for p, v in row.items()))
    what = f"sub-{', '.join(args.participant_label)}" if args.participant_label else "3 subject/sessions"
    cache = "numba cache cleared" if args.clear_numba_cache else "numba cache kept"
    print(f"wall time ({what}, cold start to report, {cache}, nprocs {args.nprocs}): runs "
          f"{[round(t, 1) for t in times]} s, median {np.median(times):.1f} s")
    print(f"demo creation (dmrimc-bids-demo, a new process): {create_s:.1f} s")
    res = {"recovery": rec, "pooled": pool, "create_s": round(create_s, 2), "wall_s": [round(t, 2) for t in times],
           "wall_s_median": round(float(np.median(times)), 2)}
    for p, v in pool.items():
        print(f"pooled {p}: rho {v['rho']} MedAE {v['medae']} (constant guess {v['medae_constant']})")
    if args.record:
        _record(res, args)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
