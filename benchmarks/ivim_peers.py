#!/usr/bin/env python
"""The app's IVIM (default options) side by side with dipy's IvimModel and the OSIPI code collection.

Two data sets, every estimator on the same voxels in one run:
1. synthetic: a 12-b IVIM protocol (b 0, 10, 20, 30, 50, 80, 100, 200, 400, 600, 800, 1000 s/mm², one
   direction each, δ/Δ 20/40 ms), bi-exponential voxels with f U(0.02, 0.3), D U(0.5, 2.5) µm²/ms, D*
   U(5, 100) µm²/ms, S0 = 1, Rician noise at SNR 30 (σ = 1/30), this script's own seed;
2. the OSIPI unit-test voxels (../shared/reference/ivim/unit_tests/generic_27regions: 21 perfused regions
   with 0.03 < f < 0.97, 18 b-values), 300 noisy fits each at SNR 30 (Gaussian noise SD 1/SNR, as OSIPI's
   reference_output.csv was made), with the collection's own published statistic from that csv beside ours.

The app path: the voxels go through the app's own preprocessing (core.preprocess.spherical_mean and
normalise_b0 with the app's default b0 threshold) and the IVIM model the fitting node builds from the
app's default Config (registry.build_model('ivim', **Config.model_options("ivim"))). Peers: dipy 1.12
IvimModel(fit_method='trr', gradient table with b0_threshold=0 so that b = 10-50 are not b0), and, where
osipi-ivim installs, IAR_LU_segmented_2step, OJ_GU_seg and TF_reference_IVIMfit through OsipiBase with
their defaults (the wheel's modules import `src.*`: a small import shim maps `src` to site-packages).
Printed: Spearman ρ and median absolute error for f, D and D* (µm²/ms), and voxels/s (ours: median of 3
runs of the model's fit, 2 cores; peers: one run on --peer-voxels). The last line is one JSON object.

    pip install ".[peers]"   # dipy and osipi-ivim
    python benchmarks/ivim_peers.py [--data ../shared/reference/ivim] [--voxels 8000] [--peer-voxels 1000] [--record]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
B12 = np.array([0, 10, 20, 30, 50, 80, 100, 200, 400, 600, 800, 1000], float)
OSIPI_ALGORITHMS = ("IAR_LU_segmented_2step", "OJ_GU_seg", "TF_reference_IVIMfit")
PARAMS = (("f", "fV"), ("D", "D"), ("Dstar", "Dstar"))


def biexp(b, f, d, dstar):
    """IVIM signal [V, M] with S0 = 1; b in s/mm², D and D* in µm²/ms."""
    b = np.asarray(b, float)[None, :] * 1e-3
    return f[:, None] * np.exp(-b * dstar[:, None]) + (1 - f[:, None]) * np.exp(-b * d[:, None])


def synthetic(n: int, snr: float, seed: int, b=B12):
    """(signals [n, M] with Rician noise, truth {f, D, Dstar}) of the issue's generator."""
    rng = np.random.default_rng(seed)
    truth = {"f": rng.uniform(0.02, 0.3, n), "D": rng.uniform(0.5, 2.5, n), "Dstar": rng.uniform(5, 100, n)}
    clean = biexp(b, truth["f"], truth["D"], truth["Dstar"])
    sigma = 1.0 / snr
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    return noisy, truth


def app_ivim(signals, b, estimator: str | None = None, repeats: int = 3, small_delta=20.0, big_delta=40.0,
             echo_time=60.0):
    """The app's path: spherical mean, b0 normalisation and the IVIM model of the default Config (or with
    --ivim-estimator ``estimator``). Returns (maps, fit seconds: median of ``repeats``)."""
    from dmrimc_bids.core.fitting.registry import build_model
    from dmrimc_bids.core.preprocess import normalise_b0, spherical_mean
    from dmrimc_bids.core.protocol import Protocol
    from dmrimc_bids.workflows.config import Config

    cfg = Config.from_dict(out_dir="unused") if estimator is None else Config.from_dict(out_dir="unused", ivim_estimator=estimator)
    prot = Protocol(np.asarray(b, float), small_delta, big_delta, echo_time)
    sph, shells, _ = spherical_mean(signals, prot, cfg.preprocessing.b0_threshold, cfg.preprocessing.shell_tolerance)
    norm, _, _ = normalise_b0(sph, shells, cfg.preprocessing.b0_threshold, pool_series=not cfg.preprocessing.b0_per_series)
    model = build_model("ivim", protocol=shells, **cfg.model_options("ivim"))
    model.fit(norm[:64])  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fit = model.fit(norm)
        times.append(time.perf_counter() - t0)
    return fit.maps(), float(np.median(times))


def dipy_ivim(signals, b):
    """dipy IvimModel (trr) with its defaults; b0_threshold 0 so that low b stay IVIM data."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.ivim import IvimModel

    bvecs = np.tile([1.0, 0, 0], (len(b), 1))
    bvecs[np.asarray(b) == 0] = 0
    gtab = gradient_table(np.asarray(b, float), bvecs=bvecs, b0_threshold=0)
    model = IvimModel(gtab, fit_method="trr")
    t0 = time.perf_counter()
    fit = model.fit(signals)
    el = time.perf_counter() - t0
    return {"fV": fit.perfusion_fraction, "D": fit.D * 1e3, "Dstar": fit.D_star * 1e3}, el


def osipi_module():
    """OsipiBase from the osipi-ivim wheel (its modules import `src.*`), or None where it does not install."""
    try:
        import wrappers  # noqa: F401  (the wheel's top-level package)
    except ImportError:
        return None
    site = Path(sys.modules["wrappers"].__file__).resolve().parents[1]
    if "src" not in sys.modules:
        shim = types.ModuleType("src")
        shim.__path__ = [str(site)]
        sys.modules["src"] = shim
    from src.wrappers.OsipiBase import OsipiBase
    return OsipiBase


def osipi_ivim(name, signals, b):
    """One OSIPI algorithm with its defaults: ({fV, D, Dstar} in µm²/ms, seconds)."""
    import importlib
    osipi_module()
    alg = getattr(importlib.import_module(f"src.standardized.{name}"), name)(bvalues=np.asarray(b, float))
    t0 = time.perf_counter()
    res = alg.osipi_fit(np.asarray(signals, float), np.asarray(b, float))
    el = time.perf_counter() - t0
    return {"fV": np.asarray(res["f"], float), "D": np.asarray(res["D"], float) * 1e3,
            "Dstar": np.asarray(res["Dp"], float) * 1e3}, el


def scores(est: dict, truth: dict) -> dict:
    """Spearman ρ and median absolute error per parameter (NaN estimates count as failures: error = range)."""
    out = {}
    for p, k in PARAMS:
        e, t = np.asarray(est[k], float).ravel(), truth[p]
        ok = np.isfinite(e)
        out[p] = {"rho": round(float(spearmanr(np.where(ok, e, np.nanmedian(e)), t)[0]), 4),
                  "median_error": round(float(np.median(np.abs(np.where(ok, e, np.nanmedian(e)) - t))), 4)}
        if k + "_ci95lo" in est:   # the 95 % intervals' coverage of the truth (estimators that give them)
            lo, hi = (np.asarray(est[k + s], float).ravel() for s in ("_ci95lo", "_ci95hi"))
            out[p]["coverage95"] = round(float(np.mean((lo <= t) & (t <= hi))), 3)
    out["constant_guess"] = {p: round(float(np.median(np.abs(np.median(truth[p]) - truth[p]))), 4) for p, _ in PARAMS}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "reference" / "ivim")
    ap.add_argument("--voxels", type=int, default=8000)
    ap.add_argument("--peer-voxels", type=int, default=1000, help="voxels the (slow) peers fit")
    ap.add_argument("--snr", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=2029)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)

    signals, truth = synthetic(args.voxels, args.snr, args.seed)
    ours, t_ours = app_ivim(signals, B12)
    rate_ours = args.voxels / t_ours
    sub = slice(0, args.peer_voxels)
    truth_sub = {k: v[sub] for k, v in truth.items()}
    results = {"app (default)": {**scores(ours, truth), "voxels_per_s": round(rate_ours)},
               "app on the peers' voxels": scores({k: ours[k][sub] for _, k in PARAMS}, truth_sub)}
    seg, t_seg = app_ivim(signals, B12, "segmented", repeats=1)
    results["app --ivim-estimator segmented"] = {**scores(seg, truth), "voxels_per_s": round(args.voxels / t_seg)}
    peers = [("dipy IvimModel trr", lambda s: dipy_ivim(s, B12))]
    if osipi_module() is not None:
        peers += [(f"OSIPI {a}", lambda s, a=a: osipi_ivim(a, s, B12)) for a in OSIPI_ALGORITHMS]
    else:
        print("osipi-ivim not installed: OSIPI peers skipped (pip install osipi-ivim)", file=sys.stderr)
    for label, run in peers:
        try:
            est, el = run(signals[sub])
        except Exception as exc:  # a peer that fails is reported, not fatal
            print(f"{label}: failed ({exc})", file=sys.stderr)
            continue
        results[label] = {**scores(est, truth_sub), "voxels_per_s": round(args.peer_voxels / el, 1)}
    lines = ["| estimator | f ρ | f median error | D ρ | D median error [µm²/ms] | D* ρ | D* median error [µm²/ms] "
             "| voxels/s |", "|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        cells = " | ".join(f"{r[p]['rho']:.3f} | {r[p]['median_error']:.3f}" for p, _ in PARAMS)
        lines.append(f"| {label} | {cells} | {r.get('voxels_per_s', '')} |")
        print(f"{label:34s} " + "  ".join(f"{p} {r[p]['rho']:.3f}/{r[p]['median_error']:.3f}" for p, _ in PARAMS)
              + f"  {r.get('voxels_per_s', '')} vox/s")
    cover = results["app (default)"]
    cover_line = ("95 % interval coverage of the app's default estimator: " + ", ".join(
        f"{p} {cover[p]['coverage95']:.3f}" for p, _ in PARAMS if "coverage95" in cover[p]) + ".")
    print(cover_line)
    cg = results["app (default)"]["constant_guess"]
    lines.append(f"| constant guess (the truths' median) | 0 | {cg['f']:.3f} | 0 | {cg['D']:.3f} | 0 | {cg['Dstar']:.3f} | |")
    best_peer = max((r["voxels_per_s"] for k, r in results.items() if k.startswith("OSIPI IAR")), default=None)
    speed_ratio = rate_ours / best_peer if best_peer else None

    osipi_lines, osipi = [], {}
    unit = args.data / "unit_tests"
    if unit.is_dir():
        def fitter(sig, b):
            return app_ivim(sig, b, repeats=1)[0]
        from ivim_osipi import osipi_statistics
        mine, published = osipi_statistics(unit, 30, fitter=fitter)
        mine = {p: [round(x, 4) for x in v] for p, v in mine.items()}
        published = {a: {p: [round(x, 4) for x in v] for p, v in st.items()} for a, st in published.items()}
        osipi = {"ours": mine, **{a: published[a] for a in OSIPI_ALGORITHMS if a in published}}
        osipi_lines = ["| estimator | f bias / CV | D bias / CV | D* bias / CV |", "|---|---|---|---|"]
        for label, st in osipi.items():
            osipi_lines.append(f"| {label} | " + " | ".join(f"{st[p][0]:.3f} / {st[p][1]:.3f}" for p in ("f", "D", "Dp"))
                               + " |")
            print(f"OSIPI regions SNR 30 {label:24s} " + "  ".join(f"{p} {st[p][0]:.3f}/{st[p][1]:.3f}"
                                                                 for p in ("f", "D", "Dp")))
    else:
        print(f"OSIPI unit-test data not found at {args.data}: that part is skipped", file=sys.stderr)

    if args.record:
        from _record import machine, record
        record("ivim-peers", "\n".join([
            f"Command: `python benchmarks/ivim_peers.py --voxels {args.voxels} --peer-voxels {args.peer_voxels} "
            f"--record`; machine: {machine()}. Synthetic 12-b IVIM set (seed {args.seed}, SNR {args.snr:g}, "
            "Rician): Spearman ρ / median absolute error; the app row is the app's default path on all "
            f"{args.voxels} voxels, the peers fit the first {args.peer_voxels} (the app's figures on those "
            "are the second row).", "", *lines, "",
            (f"Speed: the app's IVIM {rate_ours:,.0f} voxels/s (median of 3, 2 cores) = {speed_ratio:,.0f}x OSIPI "
             "IAR_LU_segmented_2step." if speed_ratio else f"Speed: the app's IVIM {rate_ours:,.0f} voxels/s."),
            "", cover_line, "", "OSIPI's 21 perfused regions (generic_27regions, 18 b), SNR 30, 300 fits each: median over regions "
            "of |mean - true|/true and SD/true; ours measured here, the OSIPI rows are the collection's published "
            "reference_output.csv.", "", *osipi_lines]))
    print(json.dumps({"synthetic": results, "speed_ratio_vs_IAR_LU_segmented_2step": speed_ratio,
                      "osipi_regions_snr30": osipi}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
