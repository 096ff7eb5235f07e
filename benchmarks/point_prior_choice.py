#!/usr/bin/env python
"""Which prior each tissue parameter's point estimate should follow (issue #32), chosen on the
leave-one-out folds of the published real-histology substrates, never on held-out data.

The app (`dmrimc-bids ... participant`, default options otherwise) runs on substrates 1-12 of
``../shared/reference/histo_loo`` (default_on_histology.py's BIDS dataset) twice per SNR: every
parameter's estimate under the posterior flat over the dictionary's entries (``--point-prior
NAME=entries ...``) and under the posterior flat over its design axes (``NAME=design``). Both share the
ranking posterior (``--prior entries``); only the weights of the retained entries differ.

The rule, per parameter: the prior with the lower median absolute error relative to the constant
guess's, averaged over the SNRs (50: the shared noisy signals; 20: Rician noise, seed 20), unless it
lowers Spearman's ρ by more than RHO_TOLERANCE at either SNR. The rule is cross-validated by substrate:
for each substrate, the choice made on the other eleven is scored on it; the pooled cross-validated
median error is reported beside each fixed choice and the constant guess, with how many of the twelve
folds agree with the choice made on all twelve (the one shipped as dmrimc_bids/options.DEFAULT_POINT_PRIOR).

    python benchmarks/point_prior_choice.py [--snrs 50 20] [--work DIR [--reuse]] [--record]

The last line printed is one JSON object {"choice": {name: prior}, ...}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from default_on_histology import DEFAULT_DATA, read_maps, run_app, write_bids  # noqa: E402
from loo_histo import NAMES, spearman  # noqa: E402

PRIORS = ("entries", "design")
#: A prior that lowers the median error is not chosen when it costs more than this in Spearman's ρ.
RHO_TOLERANCE = 0.02


def run_case(work: Path, data: Path, subs, snr: float, seed: int, reuse: bool = False) -> dict:
    """{prior: (estimates {sub: [V, 5]}), 'truth': {sub: [V, 5]}} of one SNR. reuse: score the maps of an
    earlier run in the same --work folder (the dataset is deterministic: written again for its truth)."""
    root = work / f"snr{snr:g}"
    done = reuse and all((root / f"out_{prior}").is_dir() for prior in PRIORS)
    shutil.rmtree(root / "bids", ignore_errors=True)
    if not done:
        shutil.rmtree(root, ignore_errors=True)
    truth = write_bids(root / "bids", data, subs, snr, seed)
    out = {"truth": truth}
    for prior in PRIORS:
        if not done:
            run_app(root / "bids", root / f"out_{prior}", root / f"work_{prior}",
                    ["--point-prior", *(f"{k}={prior}" for k in NAMES)])
        out[prior] = read_maps(root / f"out_{prior}", subs)
    return out


def pooled(case: dict, prior_of: dict, subs, j: int) -> tuple:
    """(estimates, truths) of parameter j pooled over subs, each substrate under prior_of[sub]."""
    e = np.concatenate([case[prior_of[n]][n][:, j] for n in subs])
    t = np.concatenate([case["truth"][n][:, j] for n in subs])
    return e, t


def medae(e, t) -> float:
    return float(np.median(np.abs(e - t)))


def choose(cases: dict, subs, j: int) -> str:
    """The rule (module docstring) on substrates subs for parameter j."""
    score, rho = {}, {}
    for prior in PRIORS:
        rel, r = [], []
        for case in cases.values():
            e, t = pooled(case, dict.fromkeys(subs, prior), subs, j)
            rel.append(medae(e, t) / medae(np.full_like(t, np.median(t)), t))
            r.append(spearman(e, t))
        score[prior], rho[prior] = float(np.mean(rel)), np.array(r)
    best = min(PRIORS, key=score.get)
    return best if np.all(rho[best] >= rho["entries"] - RHO_TOLERANCE) else "entries"


def evaluate(cases: dict, subs) -> dict:
    out = {}
    for j, name in enumerate(NAMES):
        full = choose(cases, subs, j)
        cv = {n: choose(cases, [m for m in subs if m != n], j) for n in subs}
        row = {"choice": full, "folds_agreeing": sum(v == full for v in cv.values())}
        for snr, case in cases.items():
            fig = {}
            for label, prior_of in (("cv", cv), *((p, dict.fromkeys(subs, p)) for p in PRIORS)):
                e, t = pooled(case, prior_of, subs, j)
                fig[label] = {"medae": round(medae(e, t), 5), "spearman": round(spearman(e, t), 4)}
            t = pooled(case, dict.fromkeys(subs, "entries"), subs, j)[1]
            fig["constant"] = {"medae": round(medae(np.full_like(t, np.median(t)), t), 5)}
            row[f"snr{snr:g}"] = fig
        out[name] = row
    return out


def _record(res: dict, args) -> None:
    from _record import machine, record

    snrs = [f"snr{s:g}" for s in args.snrs]
    lines = [f"`python benchmarks/point_prior_choice.py --snrs {' '.join(f'{s:g}' for s in args.snrs)} --record` "
             f"({machine()}; substrates 1-12 of shared/reference/histo_loo through `dmrimc-bids ... participant`, "
             "each parameter's estimate under the entries prior and under the design prior; SNR 20: Rician noise, "
             "seed 20). MedAE (ρ); 'cross-validated': each substrate under the choice made on the other eleven.", "",
             "| parameter | choice | folds agreeing | " + " | ".join(
                 f"{s.upper()} {c}" for s in snrs for c in ("entries", "design", "cross-validated", "constant"))
             + " |", "|---|---|---|" + "---|" * (4 * len(snrs))]
    for name, row in res["params"].items():
        cells = []
        for s in snrs:
            f = row[s]
            cells += [f"{f[c]['medae']:.4g} ({f[c]['spearman']:.3f})" for c in ("entries", "design", "cv")]
            cells.append(f"{f['constant']['medae']:.4g}")
        lines.append(f"| {name} | {row['choice']} | {row['folds_agreeing']}/{len(res['substrates'])} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Shipped as `dmrimc_bids/options.DEFAULT_POINT_PRIOR`: "
              + ", ".join(f"{k}={v}" for k, v in res["choice"].items()) + "."]
    record("point-prior-choice", "\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--subs", type=int, nargs="+", default=list(range(1, 13)))
    ap.add_argument("--snrs", type=float, nargs="+", default=[50.0, 20.0])
    ap.add_argument("--noise-seed", type=int, default=20)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--reuse", action="store_true", help="score the maps of an earlier run in --work")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    if not (args.data / "npy_files").is_dir():
        print(f"SKIP: no leave-one-out data at {args.data}")
        return 0
    work = (args.work or Path(tempfile.mkdtemp(prefix="dmrimc_prior_"))).resolve()
    try:
        cases = {snr: run_case(work, args.data, args.subs, snr, args.noise_seed, args.reuse) for snr in args.snrs}
        params = evaluate(cases, args.subs)
        res = {"choice": {k: v["choice"] for k, v in params.items()}, "params": params, "substrates": args.subs}
        for name, row in params.items():
            print(name, row["choice"], f"{row['folds_agreeing']}/{len(args.subs)}",
                  {s: {c: row[s][c]["medae"] for c in row[s]} for s in row if s.startswith("snr")})
        if args.record:
            _record(res, args)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
