#!/usr/bin/env python
"""Leave-one-out Histo-μSim experiment (paper Fig. 4, protocol PGSEin, SNR 50).

For each substrate N: train on the fold dictionary without N, fit N's noisy signals with its σ
map, and pool Spearman ρ, median absolute error and bias per parameter over the substrates,
beside the published tool's figures (published_reference.json). Fits all 21 measurements, as the
published run did. The last line printed is one JSON object.

    python benchmarks/loo_histo.py [--data DIR] [--subs 1 2 ...] [--surrogate local|global]
                                   [--repeats N] [--record]
    python benchmarks/loo_histo.py --calibration [--threads 1] [--repeats N] [--record]

--calibration (issue #20) runs both estimators, maximum likelihood (ml) and the posterior (the default),
at SNR 50 (the published noisy data and σ maps) and SNR 20 (Rician noise with its own seed, 20261126,
added to the held-out substrate's noise-free signals in all_signals_PGSEin_config14.npy, found by its
(fin, vCS)), and reports per parameter ρ, MedAE, the coverage of the 95 % intervals and their mean width
beside the constant guess (the prior median), plus both estimators' throughput in the same run.

voxels_per_s is the fit (grid search + refinement) with the surrogate built beforehand, as for a
volume where one surrogate serves every voxel; voxels_per_s_incl_surrogate_build adds the per-fold
build. With --repeats N the timings are medians of N runs. --record writes the table into
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "reference" / "histo_loo"

# Reference protocol "PGSEin" (shared/reference/README.md): three groups of 7, each starting at b=0.
B = [0, 50, 100, 400, 900, 1200, 1500] * 3
SD = [np.nan, 3.9, 5.2, 9.2, 15.0, 18.2, 21.0] + [np.nan, 3.9, 5.2, 9.2, 13.0, 15.8, 18.5] * 2
BD = [np.nan, 27.8, 29.0, 33.0, 28.7, 31.8, 34.7] + [np.nan, 7.8, 29.0, 33.0, 37.0, 39.6, 42.3] * 2
NAMES = ["fin", "vCS_cyl", "D0in", "D0ex", "kappa"]


def published_reference(data_dir: Path) -> dict:
    """published_reference.json with its parameters under the app's names (vCS -> vCS_cyl)."""
    from dmrimc_bids.core.dictionary import canonical_name
    ref = json.loads((Path(data_dir) / "published_reference.json").read_text())
    ref["params"] = {canonical_name(k): v for k, v in ref["params"].items()}
    return ref


def spearman(a, b) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


def run(data: Path, subs, smoothing: float, reg: float, surrogate: str = "local", noise: str = "offset-gaussian",
        neighbours: int = 32):
    import nibabel as nib

    from dmrimc_bids.core.dictionary import Dictionary
    from dmrimc_bids.core.fitting.dictfit import DictionaryModel
    from dmrimc_bids.core.protocol import Protocol

    proto = Protocol(B, SD, BD)
    est, true = [], []
    t_fit, t_build, n_vox = 0.0, 0.0, 0
    warm = True
    for n in subs:
        sig = np.load(data / f"npy_files/signals/PGSEin_sub{n}_out_train_SIGNALS.npy")
        par = np.load(data / f"npy_files/parameters/PGSEin_sub{n}_out_train_PARAMS.npy")
        dic = Dictionary(sig, par, NAMES, proto)
        y = np.asarray(nib.load(data / f"niftis/signals/PGSEin_sigs_noisy_SNR50_sub{n}_out.nii").dataobj, float)
        gt = np.asarray(nib.load(data / f"niftis/parameters/PGSEin_parameters_SNR50_sub{n}_out.nii").dataobj, float)
        sigma = np.asarray(nib.load(data / f"noise_maps/noise_LOO_SNR50_PGSEin_sub{n}_out.nii").dataobj, float)
        if warm:  # compile (or load) the numba kernels outside the timings
            DictionaryModel(dic, surrogate="local", noise=noise).fit(y[:2, :1], sigma=sigma[:2, :1])
            warm = False
        t0 = time.perf_counter()
        model = DictionaryModel(dic, n_averages=1, regularisation=(2, reg), smoothing=smoothing,
                                surrogate=surrogate, noise=noise, n_neighbours=neighbours)
        model.surrogate  # built once per dictionary (here: per fold)
        t1 = time.perf_counter()
        fit = model.fit(y, sigma=sigma)
        t2 = time.perf_counter()
        t_build += t1 - t0
        t_fit += t2 - t1
        n_vox += int(np.prod(y.shape[:-1]))
        est.append(np.stack([fit.params[k].ravel() for k in NAMES], 1))
        true.append(gt.reshape(-1, 5))
        print(f"sub{n}: {y.shape[0] * y.shape[1]} voxels, exit ok {np.mean(fit.exitcode == 1):.3f}", file=sys.stderr)
    est, true = np.concatenate(est), np.concatenate(true)
    out = {}
    for j, k in enumerate(NAMES):
        err = est[:, j] - true[:, j]
        out[k] = {"spearman": round(spearman(est[:, j], true[:, j]), 4),
                  "medae": round(float(np.median(np.abs(err))), 5), "bias": round(float(np.mean(err)), 5)}
    return {"params": out, "voxels_per_s": round(n_vox / t_fit, 2), "n_voxels": n_vox,
            "voxels_per_s_incl_surrogate_build": round(n_vox / (t_fit + t_build), 2),
            "seconds_fit": round(t_fit, 3), "seconds_surrogate_build": round(t_build, 3),
            "surrogate": surrogate, "noise": noise, "smoothing": smoothing, "neighbours": neighbours,
            "substrates": list(subs)}


def held_out_data(data: Path, n: int, snr: float, rng):
    """(noisy signals [V, 21], truth [V, 5], σ [V]) of substrate n: the published SNR 50 files, or noise-free
    signals of that substrate with Rician noise of σ = 1/snr."""
    import nibabel as nib

    gt = np.asarray(nib.load(data / f"niftis/parameters/PGSEin_parameters_SNR50_sub{n}_out.nii").dataobj, float)
    gt = gt.reshape(-1, 5)
    if snr == 50:
        y = np.asarray(nib.load(data / f"niftis/signals/PGSEin_sigs_noisy_SNR50_sub{n}_out.nii").dataobj, float)
        sigma = np.asarray(nib.load(data / f"noise_maps/noise_LOO_SNR50_PGSEin_sub{n}_out.nii").dataobj, float)
        return y.reshape(-1, 21), gt, sigma.ravel()
    allsig = np.load(data / "all_signals_PGSEin_config14.npy")
    allpar = np.load(data / "all_params_PGSEin_config14.npy")
    rows = np.flatnonzero(np.isclose(allpar[:, 0], gt[0, 0], atol=1e-4) & np.isclose(allpar[:, 1], gt[0, 1], atol=1e-3))
    clean, truth = allsig[rows], allpar[rows]
    sigma = np.full(len(clean), 1.0 / snr)
    noise = rng.normal(0, 1, (2,) + clean.shape) * sigma[None, :, None]
    return np.hypot(clean + noise[0], noise[1]), truth, sigma


def calibration(data: Path, subs, snr: float) -> dict:
    """Both estimators on the leave-one-out folds at one SNR: accuracy, 95 % coverage and width, throughput."""
    from dmrimc_bids.core.dictionary import Dictionary
    from dmrimc_bids.core.fitting.dictfit import DictionaryModel
    from dmrimc_bids.core.fitting.posterior import PosteriorModel
    from dmrimc_bids.core.protocol import Protocol
    from dmrimc_bids.options import DEFAULT_POINT_PRIOR

    proto = Protocol(B, SD, BD)
    rng = np.random.default_rng(20261126)
    acc = {e: {"est": [], "lo": [], "hi": [], "contraction": [], "fit_s": 0.0, "build_s": 0.0} for e in ("ml", "posterior")}
    true, prior_median, n_vox = [], [], 0
    warm = Dictionary(np.load(data / f"npy_files/signals/PGSEin_sub{subs[0]}_out_train_SIGNALS.npy"),
                      np.load(data / f"npy_files/parameters/PGSEin_sub{subs[0]}_out_train_PARAMS.npy"), NAMES, proto)
    for model in (DictionaryModel(warm, surrogate="local"), PosteriorModel(warm, model_error=False)):
        model.fit(warm.signals[:4].astype(float), sigma=np.full(4, 0.02))   # compile the kernels outside the timings
    for n in subs:
        sig = np.load(data / f"npy_files/signals/PGSEin_sub{n}_out_train_SIGNALS.npy")
        par = np.load(data / f"npy_files/parameters/PGSEin_sub{n}_out_train_PARAMS.npy")
        dic = Dictionary(sig, par, NAMES, proto)
        y, gt, sigma = held_out_data(data, n, snr, rng)
        for est in ("ml", "posterior"):
            t0 = time.perf_counter()
            if est == "ml":
                model = DictionaryModel(dic, surrogate="local")
                model.surrogate
            else:   # the app's default estimate (point priors of dmrimc_bids/options.py)
                model = PosteriorModel(dic, point_prior=DEFAULT_POINT_PRIOR)
                model.model_error(float(np.median(sigma)))
            t1 = time.perf_counter()
            fit = model.fit(y, sigma=sigma)
            a = acc[est]
            a["build_s"] += t1 - t0
            a["fit_s"] += time.perf_counter() - t1
            for key, maps in (("est", fit.params), ("lo", fit.ci95lo), ("hi", fit.ci95hi), ("contraction", fit.contraction)):
                a[key].append(np.stack([maps[k].ravel() for k in NAMES], 1))
        true.append(gt)
        prior_median.append(np.repeat(np.median(par, 0)[None], len(gt), 0))
        n_vox += len(gt)
    true, const = np.concatenate(true), np.concatenate(prior_median)
    out = {"snr": snr, "n_voxels": n_vox, "substrates": list(subs), "constant": {}, "estimators": {}}
    for j, k in enumerate(NAMES):
        out["constant"][k] = {"medae": round(float(np.median(np.abs(const[:, j] - true[:, j]))), 5)}
    for est, a in acc.items():
        e, lo, hi, c = (np.concatenate(a[key]) for key in ("est", "lo", "hi", "contraction"))
        rows = {}
        for j, k in enumerate(NAMES):
            rows[k] = {"spearman": round(spearman(e[:, j], true[:, j]), 4),
                       "medae": round(float(np.median(np.abs(e[:, j] - true[:, j]))), 5),
                       "coverage95": round(float(np.mean((true[:, j] >= lo[:, j]) & (true[:, j] <= hi[:, j]))), 4),
                       "width95": round(float(np.nanmean(hi[:, j] - lo[:, j])), 5),
                       "contraction_median": round(float(np.median(c[:, j])), 3)}
        out["estimators"][est] = {"params": rows, "voxels_per_s": round(n_vox / a["fit_s"], 1),
                                  "seconds_per_dictionary_build": round(a["build_s"] / len(subs), 3)}
    return out


def _record_calibration(results, ref, args):
    from _record import machine, record

    lines = [f"`python benchmarks/loo_histo.py --calibration --threads {args.threads} --repeats {args.repeats} "
             f"--record` ({machine()}; {results[0]['n_voxels']} voxels, substrates 1-12; SNR 20: Rician noise, "
             "seed 20261126, on the held-out substrates' noise-free signals). Constant guess = the fold "
             "dictionary's median.", ""]
    for res in results:
        lines += [f"**SNR {res['snr']:g}**", "",
                  "| parameter | ρ posterior | ρ ML | ρ published | MedAE posterior | MedAE ML | MedAE published | "
                  "MedAE constant | coverage95 posterior | coverage95 ML | width posterior | width ML | "
                  "contraction (median) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        post, ml = res["estimators"]["posterior"]["params"], res["estimators"]["ml"]["params"]
        for k in NAMES:
            pub = ref["params"][k] if res["snr"] == 50 else {"spearman": float("nan"), "medae": float("nan")}
            lines.append(f"| {k} | {post[k]['spearman']:.4f} | {ml[k]['spearman']:.4f} | {pub['spearman']:.4f} | "
                         f"{post[k]['medae']:.4g} | {ml[k]['medae']:.4g} | {pub['medae']:.4g} | "
                         f"{res['constant'][k]['medae']:.4g} | {post[k]['coverage95']:.3f} | {ml[k]['coverage95']:.3f} | "
                         f"{post[k]['width95']:.4g} | {ml[k]['width95']:.4g} | {post[k]['contraction_median']:.2f} |")
        e = res["estimators"]
        lines += ["", f"Throughput, same run, {args.threads} thread(s): posterior {e['posterior']['voxels_per_s']:.0f} "
                  f"voxels/s (runs {e['posterior']['voxels_per_s_all']}; one-off model-error cross-validation "
                  f"{e['posterior']['seconds_per_dictionary_build']:.2f} s per dictionary), ML "
                  f"{e['ml']['voxels_per_s']:.0f} voxels/s (runs {e['ml']['voxels_per_s_all']}; surrogate build "
                  f"{e['ml']['seconds_per_dictionary_build']:.2f} s); published {ref['voxels_per_s']} voxels/s "
                  f"(posterior {e['posterior']['voxels_per_s'] / ref['voxels_per_s']:.0f}x).", ""]
    record("loo-calibration", "\n".join(lines))


def _record(res, ref, args):
    from _record import machine, record

    units = {"fin": "", "vCS_cyl": " (µm)", "D0in": " (µm²/ms)", "D0ex": " (µm²/ms)", "kappa": " (µm/s)"}
    lines = [f"`python benchmarks/loo_histo.py --surrogate {res['surrogate']} --noise {res['noise']} "
             f"--threads {res['threads']} --repeats {args.repeats} --record` ({machine()}; "
             f"{res['n_voxels']} voxels, substrates {res['substrates'][0]}-{res['substrates'][-1]}, "
             f"smoothing {res['smoothing']}"
             + (f", K = {res['neighbours']}" if res["surrogate"] == "local" else "") + ")", "",
             "| parameter | Spearman ρ ours | published | MedAE ours | published | x published | bias ours |",
             "|---|---|---|---|---|---|---|"]
    for k, v in res["params"].items():
        r = ref["params"][k]
        lines.append(f"| {k}{units.get(k, '')} | {v['spearman']:.4f} | {r['spearman']:.4f} | {v['medae']:.4g} | "
                     f"{r['medae']:.4g} | {v['medae'] / r['medae']:.3f} | {v['bias']:+.4g} |")
    lines += ["", f"Fit throughput {res['voxels_per_s']:.0f} voxels/s (runs: {res['voxels_per_s_all']}), "
              f"**{res['voxels_per_s'] / ref['voxels_per_s']:.0f}x** the published tool's "
              f"{ref['voxels_per_s']} voxels/s; including the per-fold surrogate build "
              f"{res['voxels_per_s_incl_surrogate_build']:.0f} voxels/s "
              f"({res['voxels_per_s_incl_surrogate_build'] / ref['voxels_per_s']:.0f}x)."]
    record(f"loo-{res['surrogate']}-{res['noise']}", "\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the histo_loo layout")
    ap.add_argument("--subs", type=int, nargs="+", default=list(range(1, 13)))
    ap.add_argument("--smoothing", type=float, default=1e-3, help="surrogate smoothing λ")
    ap.add_argument("--reg", type=float, default=0.0, help="L2 regularisation weight (published run: 0)")
    ap.add_argument("--surrogate", choices=["local", "global"], default="local")
    ap.add_argument("--noise", choices=["offset-gaussian", "rician"], default="offset-gaussian")
    ap.add_argument("--neighbours", type=int, default=32, help="K of the local surrogate")
    ap.add_argument("--threads", type=int, default=1, help="numba/BLAS threads (published: 1)")
    ap.add_argument("--repeats", type=int, default=1, help="timing runs (median reported)")
    ap.add_argument("--record", action="store_true", help="write the rows into docs/benchmarks.md")
    ap.add_argument("--calibration", action="store_true", help="both estimators, coverage, SNR 50 and 20 (#20)")
    args = ap.parse_args(argv)
    if not (args.data / "npy_files").is_dir():
        print(f"SKIP: no leave-one-out data at {args.data} (pass --data DIR; the data is not part of the package)")
        return 0
    import numba
    from threadpoolctl import threadpool_limits
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    if args.calibration:
        return _calibration_main(args)
    runs = []
    with threadpool_limits(limits=args.threads):
        for _ in range(max(1, args.repeats)):
            runs.append(run(args.data, args.subs, args.smoothing, args.reg, args.surrogate, args.noise,
                            args.neighbours))
    res = runs[0]
    for key in ("voxels_per_s", "voxels_per_s_incl_surrogate_build"):
        res[key + "_all"] = [r[key] for r in runs]
        res[key] = float(np.median(res[key + "_all"]))
    res["threads"] = args.threads
    ref_file = args.data / "published_reference.json"
    if ref_file.is_file():
        ref = published_reference(args.data)
        print(f"{'param':6s} {'rho ours':>9s} {'rho publ':>9s} {'MedAE ours':>11s} {'MedAE publ':>11s}")
        for k, v in res["params"].items():
            r = ref["params"][k]
            print(f"{k:6s} {v['spearman']:9.4f} {r['spearman']:9.4f} {v['medae']:11.5f} {r['medae']:11.5f}")
        print(f"voxels/s ours {res['voxels_per_s']} vs published {ref['voxels_per_s']} "
              f"({res['voxels_per_s'] / ref['voxels_per_s']:.0f}x); machine {platform.machine()}, "
              f"{platform.python_version()}")
        if args.record:
            _record(res, ref, args)
    print(json.dumps(res))
    return 0


def _calibration_main(args) -> int:
    from threadpoolctl import threadpool_limits

    results = []
    with threadpool_limits(limits=args.threads):
        for snr in (50.0, 20.0):
            runs = [calibration(args.data, args.subs, snr) for _ in range(max(1, args.repeats))]
            res = runs[0]
            for est in res["estimators"]:
                speeds = [r["estimators"][est]["voxels_per_s"] for r in runs]
                res["estimators"][est]["voxels_per_s_all"] = speeds
                res["estimators"][est]["voxels_per_s"] = float(np.median(speeds))
            results.append(res)
            for est, e in res["estimators"].items():
                for k, v in e["params"].items():
                    print(f"SNR {snr:g} {est:9s} {k:8s} rho {v['spearman']:.4f} medae {v['medae']:.4g} "
                          f"(constant {res['constant'][k]['medae']:.4g}) cov95 {v['coverage95']:.3f} "
                          f"width {v['width95']:.4g}")
                print(f"SNR {snr:g} {est} {e['voxels_per_s']:.0f} voxels/s")
    if args.record:
        _record_calibration(results, published_reference(args.data), args)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
