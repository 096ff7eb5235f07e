#!/usr/bin/env python
"""The estimators rewritten for speed give the same maps (issue #41): every fitted map of this tree against a
before tree's (a git worktree of the commit before the change), on the demo dataset (every subject, default
options: the joint fit) and on the shared real-histology folds (benchmarks/default_on_histology.py's dataset,
default options), in one sitting.

    git worktree add /tmp/before 7d436ec
    python benchmarks/estimator_parity.py --before /tmp/before [--data ../shared/reference/histo_loo] [--work DIR]
                                          [--record]

Each tree runs the app with its own package (PYTHONPATH): ``dmrimc-bids ... participant`` on the demo (made once,
by this tree's generator) and default_on_histology.py (its own copy, SNR 50, the shared noisy signals). Per map
(``*_dwimap.nii.gz``): NaN in the same voxels, and the largest |after - before| over the fitted voxels divided by
the before map's range there (its largest absolute difference where the range is 0). Passes when every map is
within TOLERANCE. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "reference" / "histo_loo"
#: Largest difference of a map, as a fraction of its range, that counts as the same map (issue #41).
TOLERANCE = 1e-6


def run_tree(tree: Path, args: list, cwd: Path) -> tuple:
    """(seconds, last line printed) of ``python args`` with tree's package first on the path (the app's console
    scripts included)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    lines = res.stdout.strip().splitlines()
    return time.perf_counter() - t0, lines[-1] if lines else ""


def app(tree: Path, bids: Path, out: Path, work: Path) -> float:
    code = "import sys; from dmrimc_bids.cli.run import main; sys.exit(main())"
    return run_tree(tree, ["-c", code, str(bids), str(out), "participant", "-w", str(work), "--nprocs", "2",
                           "--derivatives", str(bids / "derivatives" / "segmentation")], bids.parent)[0]


def blood_free_fv(out: Path) -> dict:
    """The joint fit's fV over every fitted voxel of the real-histology folds, whose substrates have no blood
    (true fV 0): median, 95th percentile and the fraction under 0.01."""
    fv = np.concatenate([nib.load(p).get_fdata().ravel() for p in sorted(out.rglob(
        "*model-spinflowsim_param-fV_dwimap.nii.gz"))])
    fv = fv[np.isfinite(fv)]
    return {"median": round(float(np.median(fv)), 4), "p95": round(float(np.percentile(fv, 95)), 4),
            "under_0.01": round(float(np.mean(fv < 0.01)), 3)}


def compare(before: Path, after: Path) -> dict:
    """{map name (subject and session stripped): (worst fraction of the range, voxels compared)} over both
    folders' fitted maps; AssertionError where the map sets or the NaN voxels differ."""
    maps = sorted(p.relative_to(before) for p in before.rglob("*_dwimap.nii.gz"))
    assert maps and maps == sorted(p.relative_to(after) for p in after.rglob("*_dwimap.nii.gz")), \
        f"different map sets in {before} and {after}"
    worst: dict = {}
    for rel in maps:
        x, y = nib.load(before / rel).get_fdata(), nib.load(after / rel).get_fdata()
        assert np.array_equal(np.isnan(x), np.isnan(y)), f"{rel}: NaN in different voxels"
        fit = np.isfinite(x)
        if not fit.any():
            continue
        span = float(np.ptp(x[fit]))
        frac = float(np.max(np.abs(x[fit] - y[fit]))) / (span if span > 0 else 1.0)
        name = re.sub(r"(sub|ses)-[^_]+_", "", rel.name).replace("_dwimap.nii.gz", "")
        old = worst.get(name, (0.0, 0))
        worst[name] = (max(old[0], frac), old[1] + int(fit.sum()))
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="a worktree of the commit to compare with")
    ap.add_argument("--data", type=Path, default=SHARED, help="the shared real-histology folds (histo_loo)")
    ap.add_argument("--work", type=Path, default=None, help="keep the datasets and outputs here")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    trees = {"before": args.before.resolve(), "after": HERE.parent}
    work = (args.work or Path(tempfile.mkdtemp(prefix="dmrimc_parity_"))).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    run_tree(trees["after"], ["-c", "import sys; from dmrimc_bids.cli.demo import main; sys.exit(main())",
                              str(work / "demo" / "bids")], work)
    seconds, results, scores = {}, {}, {}
    for name, tree in trees.items():
        seconds[f"demo_{name}"] = round(app(tree, work / "demo" / "bids", work / "demo" / f"out_{name}",
                                            work / "demo" / f"work_{name}"), 1)
        if args.data.is_dir():
            t, last = run_tree(tree, [str(tree / "benchmarks" / "default_on_histology.py"), "--data", str(args.data),
                                      "--work", str(work / f"histology_{name}")], work)
            seconds[f"histology_{name}"] = round(t, 1)
            scores[name] = {"tissue": json.loads(last)["params"],
                            "fV (true 0)": blood_free_fv(work / f"histology_{name}" / "out")}
    results["demo"] = compare(work / "demo" / "out_before", work / "demo" / "out_after")
    if args.data.is_dir():
        results["histology folds"] = compare(work / "histology_before" / "out", work / "histology_after" / "out")
    else:
        print(f"estimator_parity.py: {args.data} absent: the real-histology folds are skipped", file=sys.stderr)
    worst = max(v[0] for r in results.values() for v in r.values())
    passed = worst <= TOLERANCE
    for case, maps in results.items():
        print(f"{case}: {len(maps)} maps, worst {max(v[0] for v in maps.values()):.2e} of a range "
              f"({sum(v[1] for v in maps.values())} map-voxels)")
    commit = subprocess.run(["git", "-C", str(trees["before"]), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    for name, sc in scores.items():
        print(f"histology folds, {name}: fV (true 0) {sc['fV (true 0)']}; tissue "
              + ", ".join(f"{k} ρ {v['spearman']:.3f} MedAE {v['medae']:.3g}" for k, v in sc["tissue"].items()))
    if args.record:
        sys.path.insert(0, str(HERE))
        from _record import machine, record
        rows = "\n".join(f"| {case} | {name} | {frac:.1e} | {n} |" for case, maps in results.items()
                         for name, (frac, n) in sorted(maps.items()))
        record("estimator-parity", (
            f"`python benchmarks/estimator_parity.py --before <worktree of {commit}> --record` ({machine()}): every "
            f"fitted map of this tree against {commit}'s, default options (the joint fit), on the demo (every "
            "subject) and on the shared real-histology folds (default_on_histology.py, SNR 50). Largest "
            "|after - before| over the fitted voxels as a fraction of the before map's range (NaN voxels equal "
            f"in every map); the bar is {TOLERANCE:g}: **{'passed' if passed else 'FAILED'}, worst {worst:.1e}**. "
            f"App seconds: {seconds}.\n\n| data | map | worst fraction of its range | map-voxels |\n|---|---|---|---|\n"
            + rows + "".join(f"\n\nHistology folds, {name}: the joint fit's fV on blood-free substrates (true 0) "
                              f"{sc['fV (true 0)']}; tissue " + ", ".join(
                                  f"{k} ρ {v['spearman']:.3f} MedAE {v['medae']:.3g}" for k, v in sc["tissue"].items())
                              for name, sc in scores.items())))
    print(json.dumps({"before": commit, "worst": worst, "passed": passed, "seconds": seconds, "scores": scores,
                      "maps": {c: {k: v[0] for k, v in m.items()} for c, m in results.items()}}))
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
