#!/usr/bin/env python
"""Segmented IVIM (core/fitting/ivim.py) on the OSIPI TF2.4 IVIM test data, beside the OSIPI algorithms.

For each of OSIPI's 21 perfused regions (0.03 < f < 0.97, generic_27regions file, 18 b-values) and SNR
30 and 100: 300 fits of the bi-exponential signal + Gaussian noise of SD 1/SNR (S0 = 1), as OSIPI's
reference_output.csv was made; printed: the median over regions of |mean - true|/true (bias) and
SD/true (CV) for f, D, D*, ours beside the OSIPI segmented algorithms (TF_reference_IVIMfit, the task
force's reference, and OJ_GU_seg, both regression-checked by OSIPI; also IAR_LU_segmented_2step and
PV_MUMC_biexp). Then the fitting speed in voxels/s (100,000 noisy voxels). The last line is one JSON object.

    python benchmarks/ivim_osipi.py --data ../shared/reference/ivim [--record]
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
ALGORITHMS = ("TF_reference_IVIMfit", "OJ_GU_seg", "IAR_LU_segmented_2step", "PV_MUMC_biexp")


def biexp(b, f, d, dstar):
    """IVIM signal with S0 = 1; b in s/mm², D and D* in µm²/ms."""
    return f * np.exp(-b * 1e-3 * dstar) + (1 - f) * np.exp(-b * 1e-3 * d)


def segmented_maps(signals, b) -> dict:
    """The segmented estimator's {fV, D, Dstar} (µm²/ms) of signals [V, M] at b [M]."""
    from dmrimc_bids.core.fitting.ivim import fit_segmented_ivim
    fit = fit_segmented_ivim(signals, b)
    return {"fV": fit.fV, "D": fit.D, "Dstar": fit.Dstar}


def osipi_statistics(unit_tests: Path, snr: int, n: int = 300, seed: int = 42, fitter=segmented_maps):
    """({param: [bias, cv]} ours, {algorithm: {param: [bias, cv]}}) medians over OSIPI's perfused regions;
    fitter(signals [V, M], b [M]) -> {fV, D, Dstar} (µm²/ms) is the estimator scored as ours."""
    data = json.loads((unit_tests / "generic_27regions_2025-10.json").read_text())
    b = np.array(data["config"]["bvalues"])
    ref = list(csv.DictReader(open(unit_tests / "reference_output.csv")))
    regions = [k for k in data if k != "config" and 0.03 < data[k]["f"] < 0.97]
    rng = np.random.default_rng(seed)
    ours, theirs = {p: [] for p in ("f", "D", "Dp")}, {}
    for r in regions:
        t = data[r]
        noisy = biexp(b, t["f"], t["D"] * 1e3, t["Dp"] * 1e3) + rng.normal(0, 1 / snr, (n, b.size))
        maps = fitter(noisy, b)
        est = {"f": maps["fV"], "D": np.asarray(maps["D"]) * 1e-3, "Dp": np.asarray(maps["Dstar"]) * 1e-3}
        for p in ours:
            est_p = np.asarray(est[p], float).ravel()
            ours[p].append((abs(np.nanmean(est_p) - t[p]) / t[p], np.nanstd(est_p) / t[p]))
        for row in ref:
            if row["Region"] == r and int(row["SNR"]) == snr:
                for p in ours:
                    tv = float(row[p])
                    theirs.setdefault(row["Algorithm"], {}).setdefault(p, []).append(
                        (abs(float(row[p + "_mu"]) - tv) / tv, float(row[p + "_std"]) / tv))
    med = lambda d: {p: np.median(np.array(v), axis=0).tolist() for p, v in d.items()}  # noqa: E731
    return med(ours), {a: med(v) for a, v in theirs.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="../shared/reference/ivim")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    unit = args.data / "unit_tests"
    if not unit.is_dir():
        print(f"OSIPI data not found at {args.data}", file=sys.stderr)
        return 0
    from dmrimc_bids.core.fitting.ivim import fit_segmented_ivim

    summary, lines = {}, ["| SNR | parameter | ours bias / CV | " + " | ".join(ALGORITHMS) + " |",
                          "|---|---|---|" + "---|" * len(ALGORITHMS)]
    for snr in (30, 100):
        ours, theirs = osipi_statistics(unit, snr)
        for p in ("f", "D", "Dp"):
            cells = [f"{theirs[a][p][0]:.3f} / {theirs[a][p][1]:.3f}" for a in ALGORITHMS]
            print(f"SNR {snr:3d} {p:2s}: ours {ours[p][0]:.3f} / {ours[p][1]:.3f}   " +
                  "  ".join(f"{a} {c}" for a, c in zip(ALGORITHMS, cells)))
            lines.append(f"| {snr} | {'D*' if p == 'Dp' else p} | **{ours[p][0]:.3f} / {ours[p][1]:.3f}** | "
                         + " | ".join(cells) + " |")
            summary[f"snr{snr}_{p}"] = [round(x, 4) for x in ours[p]]
            summary[f"snr{snr}_{p}_TF_reference"] = [round(x, 4) for x in theirs["TF_reference_IVIMfit"][p]]
    b = np.array(json.loads((unit / "generic.json").read_text())["config"]["bvalues"])
    rng = np.random.default_rng(0)
    vox = biexp(b, 0.1, 1.2, 30.0)[None, :] + rng.normal(0, 0.02, (100_000, b.size))
    fit_segmented_ivim(vox[:1000], b)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fit_segmented_ivim(vox, b)
        times.append(time.perf_counter() - t0)
    rate = vox.shape[0] / float(np.median(times))
    print(f"speed: {rate:.3g} voxels/s (median of 3, 100,000 voxels x 18 b-values)")
    summary["voxels_per_s"] = round(rate)
    if args.record:
        from _record import machine, record
        record("ivim_osipi", "\n".join([
            f"Command: `python benchmarks/ivim_osipi.py --data ../shared/reference/ivim --record`; machine: "
            f"{machine()}. Median over OSIPI's 21 perfused regions of |bias|/true and SD/true (300 fits, "
            "Gaussian noise SD 1/SNR; OSIPI figures from reference_output.csv).", "", *lines, "",
            f"Speed: {rate:.3g} voxels/s (100,000 voxels, 18 b-values; median of 3). Against dipy and the OSIPI "
            "implementations measured side by side in one run: block `ivim-peers` (benchmarks/ivim_peers.py)."]))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
