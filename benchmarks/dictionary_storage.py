#!/usr/bin/env python
"""Compact storage of a default dictionary (issue #32): the signals as their first principal components.

For each rank, the embedded dictionary's signals are reduced (core.dictionary.reduce_signals: float32 mean
and basis, float16 scores) and rebuilt; the table gives the reconstruction error (RMS, 99th percentile,
largest, in signal units where b = 0 is 1), the size on disk (compressed .npz), and what the reduction does
to the default tissue estimate: the posterior (default point priors) of substrates 1-12 of
``../shared/reference/histo_loo`` at SNR 50 (the shared noisy signals) and SNR 20 (Rician noise, seed 20),
on the measurements the app fits (b >= 250 s/mm²), scored by Spearman ρ and median absolute error beside
the full dictionary's (rank "full": float16 signals, as shipped). The last line printed is one JSON object.

    python benchmarks/dictionary_storage.py [--ranks 16 32 64 96] [--record]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from default_on_histology import DEFAULT_DATA, subject_data  # noqa: E402
from loo_histo import B, BD, NAMES, SD, spearman  # noqa: E402


def held_out(snr: float):
    """(normalised signals on b >= 250, truth, σ) of substrates 1-12 at SNR snr, and the fitted protocol."""
    from dmrimc_bids.core.protocol import Protocol

    b = np.array(B, float)
    cols = np.flatnonzero(b >= 250)
    rng = np.random.default_rng(20)
    ys, ts, ss = [], [], []
    for n in range(1, 13):
        y, gt, s = subject_data(DEFAULT_DATA, n, snr, rng)
        b0 = y[:, b == 0].mean(1, keepdims=True)
        ys.append(y[:, cols] / b0)
        ts.append(gt)
        ss.append(s / b0[:, 0])
    prot = Protocol(b[cols], np.array(SD)[cols], np.array(BD)[cols])
    return np.concatenate(ys), np.concatenate(ts), np.concatenate(ss), prot


def scores(dic, data) -> dict:
    from dmrimc_bids.core.fitting.posterior import PosteriorModel
    from dmrimc_bids.options import DEFAULT_POINT_PRIOR

    y, t, s, prot = data
    fit = PosteriorModel(dic.select(None).match(prot), point_prior=DEFAULT_POINT_PRIOR).fit(y, sigma=s)
    return {n: {"spearman": round(spearman(fit.params[n], t[:, j]), 4),
                "medae": round(float(np.median(np.abs(fit.params[n] - t[:, j]))), 5)} for j, n in enumerate(NAMES)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[16, 32, 64, 96])
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    if not (DEFAULT_DATA / "npy_files").is_dir():
        print(f"SKIP: no leave-one-out data at {DEFAULT_DATA}")
        return 0
    from dmrimc_bids.core.dictionary import Dictionary, reconstruct_signals, reduce_signals
    from dmrimc_bids.core.dictionary_default import default_dictionary, default_dictionary_path

    full = default_dictionary()
    data = {snr: held_out(snr) for snr in (50.0, 20.0)}
    rows = [{"rank": "full", "size_mb": round(default_dictionary_path().stat().st_size / 1e6, 2),
             **{f"snr{snr:g}": scores(full, d) for snr, d in data.items()}}]
    for rank in args.ranks:
        mean, basis, sc = reduce_signals(full.signals, rank)
        rebuilt = reconstruct_signals(mean, basis, sc)
        err = np.abs(rebuilt.astype(np.float64) - full.signals)
        buf = io.BytesIO()
        np.savez_compressed(buf, signal_mean=mean, signal_basis=basis, signal_scores=sc, params=full.params)
        dic = Dictionary(rebuilt, full.params, full.names, full.protocol, full.units, full.provenance, full.structure)
        rows.append({"rank": rank, "size_mb": round(buf.tell() / 1e6, 2), "rms_error": float(np.sqrt(np.mean(err ** 2))),
                     "p99_error": float(np.percentile(err, 99)), "max_error": float(err.max()),
                     **{f"snr{snr:g}": scores(dic, d) for snr, d in data.items()}})
        print(f"rank {rank}: {rows[-1]['size_mb']} MB, rms {rows[-1]['rms_error']:.1e}", flush=True)
    res = {"entries": len(full), "measurements": len(full.protocol), "rows": rows}
    if args.record:
        _record(res, args)
    print(json.dumps(res))
    return 0


def _record(res: dict, args) -> None:
    from _record import machine, record

    lines = [f"`python benchmarks/dictionary_storage.py --ranks {' '.join(map(str, args.ranks))} --record` "
             f"({machine()}): the embedded dictionary ({res['entries']} entries x {res['measurements']} measurements) "
             "stored as its first principal components (float16 scores); error of the rebuilt signals (b = 0 "
             "signal 1) and the default tissue posterior on substrates 1-12 of shared/reference/histo_loo, ρ / "
             "MedAE per parameter.", "",
             "| rank | size (MB) | RMS error | P99 error | largest error | " + " | ".join(
                 f"SNR {s} {n}" for s in (50, 20) for n in NAMES) + " |",
             "|---|---|---|---|---|" + "---|" * (2 * len(NAMES))]
    for r in res["rows"]:
        errs = ("-", "-", "-") if r["rank"] == "full" else (f"{r['rms_error']:.1e}", f"{r['p99_error']:.1e}",
                                                             f"{r['max_error']:.1e}")
        cells = [f"{r[f'snr{s}'][n]['spearman']:.3f} / {r[f'snr{s}'][n]['medae']:.4g}" for s in (50, 20) for n in NAMES]
        label = "full (float16 signals)" if r["rank"] == "full" else str(r["rank"])
        lines.append(f"| {label} | {r['size_mb']} | " + " | ".join(errs) + " | " + " | ".join(cells) + " |")
    record("dictionary-storage", "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
