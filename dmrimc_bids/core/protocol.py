"""Acquisition protocol: per-measurement b-value and gradient timing (physics only).

Units inside the core: b in s/mm², gradient duration δ (``small_delta_ms``), separation Δ
(``big_delta_ms``) and echo time (``echo_time_ms``) in ms. Reading a protocol from acquisition metadata
(sidecars, bval/bvec, preprocessed-data provenance) is bids/protocol.py's job; here are the Protocol, the
generic number-file reader of the published tools' text formats (.bval/.gdur/.gsep-like) and the distinct
measurements. Plain numpy: no nipype, no pybids.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import EX_NOINPUT, InputError

#: b at or below this [s/mm²] is b = 0: b ≈ 0 as acquired (a nominal 0, rounding). Low b such as 5-20 s/mm²
#: are IVIM data, never b0 (the b0 normalisation and the IVIM fit both rely on it).
B0_THRESHOLD = 2.0


#: Proton gyromagnetic ratio [rad/(s·T)].
GAMMA_RAD_PER_S_PER_T = 2.6752218744e8


_COLUMNS = ("b", "small_delta", "big_delta", "echo_time", "n_averaged", "series")


@dataclass
class Protocol:
    """Per-measurement acquisition parameters.

    b: b-value [s/mm²]; small_delta_ms: gradient duration δ [ms]; big_delta_ms: gradient
    separation Δ [ms]; echo_time_ms: TE [ms] (NaN when unknown); bvecs: unit gradient directions
    [N, 3] (zeros when unknown or after directional averaging); n_averaged: number of acquired
    volumes averaged into each measurement; series: index of the input series (run) a measurement
    comes from, so that b0 normalisation never mixes runs with different scaling.
    """

    b: np.ndarray
    small_delta_ms: np.ndarray
    big_delta_ms: np.ndarray
    echo_time_ms: np.ndarray | None = None
    bvecs: np.ndarray | None = None
    n_averaged: np.ndarray | None = None
    series: np.ndarray | None = None
    waveform: str = "PGSE"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.b = np.asarray(self.b, dtype=float).ravel()
        n = self.b.size
        self.small_delta_ms = _broadcast(self.small_delta_ms, n)
        self.big_delta_ms = _broadcast(self.big_delta_ms, n)
        self.echo_time_ms = _broadcast(np.nan if self.echo_time_ms is None else self.echo_time_ms, n)
        self.n_averaged = _broadcast(1 if self.n_averaged is None else self.n_averaged, n).astype(int)
        self.series = _broadcast(0 if self.series is None else self.series, n).astype(int)
        self.bvecs = np.zeros((n, 3)) if self.bvecs is None else np.asarray(self.bvecs, float).reshape(n, 3)

    def __len__(self) -> int:
        return self.b.size

    def subset(self, index) -> "Protocol":
        """The measurements selected by an index or boolean mask."""
        idx = np.arange(len(self))[index]
        extra = dict(self.extra)
        if "waveforms" in extra:  # one waveform per measurement (core.waveforms)
            extra["waveforms"] = [extra["waveforms"][i] for i in np.atleast_1d(idx)]
        return Protocol(self.b[idx], self.small_delta_ms[idx], self.big_delta_ms[idx],
                        self.echo_time_ms[idx], self.bvecs[idx], self.n_averaged[idx],
                        self.series[idx], self.waveform, extra)

    @staticmethod
    def concatenate(protocols: list["Protocol"]) -> "Protocol":
        """Join protocols of several series (runs) in order, numbering their series."""
        offset, parts = 0, []
        for p in protocols:
            parts.append(p.series + offset)
            offset = int(parts[-1].max(initial=-1)) + 1
        cat = lambda name: np.concatenate([getattr(p, name) for p in protocols])  # noqa: E731
        return Protocol(cat("b"), cat("small_delta_ms"), cat("big_delta_ms"), cat("echo_time_ms"),
                        cat("bvecs"), cat("n_averaged"), np.concatenate(parts))

    def diffusion_time_ms(self) -> np.ndarray:
        """Effective PGSE diffusion time Δ - δ/3 [ms]."""
        return self.big_delta_ms - self.small_delta_ms / 3.0

    # ---- tables -------------------------------------------------------------------------------
    def to_rows(self) -> list[dict]:
        """One dict per measurement with the protocol-table columns (times in ms)."""
        rows = []
        for i in range(len(self)):
            rows.append({"b": float(self.b[i]), "small_delta": float(self.small_delta_ms[i]),
                         "big_delta": float(self.big_delta_ms[i]),
                         "echo_time": None if math.isnan(self.echo_time_ms[i]) else float(self.echo_time_ms[i]),
                         "n_averaged": int(self.n_averaged[i]), "series": int(self.series[i])})
        return rows

    def to_table(self, path) -> None:
        """Write the protocol table (TSV; b in s/mm², times in ms)."""
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(_COLUMNS + ("bvec_x", "bvec_y", "bvec_z"))
            for i in range(len(self)):
                w.writerow([_fmt(self.b[i]), _fmt(self.small_delta_ms[i]), _fmt(self.big_delta_ms[i]),
                            _fmt(self.echo_time_ms[i]), int(self.n_averaged[i]), int(self.series[i]),
                            *(_fmt(v) for v in self.bvecs[i])])

    @classmethod
    def from_table(cls, path) -> "Protocol":
        """Read a protocol table: columns b, small_delta, big_delta [, echo_time, n_averaged, series]."""
        path = Path(path)
        try:
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh, delimiter="\t"))
        except OSError as exc:
            raise InputError(f"cannot read protocol table ({exc.strerror})", path=path,
                             fix="check the path and permissions", exit_code=EX_NOINPUT) from exc
        need = {"b", "small_delta", "big_delta"}
        if not rows or not need <= set(rows[0]):
            raise InputError("protocol table needs tab-separated columns b, small_delta, big_delta (ms)",
                             path=path, fix="add a header row with those column names")

        def col(name, default=np.nan):
            out = np.full(len(rows), default, dtype=float)
            for k, r in enumerate(rows):
                v = r.get(name)
                if v in (None, "", "n/a"):
                    continue
                try:
                    out[k] = float(v)
                except ValueError:
                    raise InputError(f"protocol table row {k + 2}, column {name}: {v!r} is not a number",
                                     path=path, fix="write numbers (or n/a) in every column") from None
            return out

        b, n_avg = col("b"), col("n_averaged", 1)
        bad = np.flatnonzero(~(np.isfinite(b) & (b >= 0)) | ~(np.isfinite(n_avg) & (n_avg >= 1)))
        if bad.size:
            raise InputError(f"protocol table row {bad[0] + 2}: b must be a number >= 0 (s/mm²) and n_averaged >= 1",
                             path=path, fix="correct that row")
        bvecs = None
        if "bvec_x" in rows[0]:
            bvecs = np.stack([col("bvec_x", 0.0), col("bvec_y", 0.0), col("bvec_z", 0.0)], axis=1)
        return cls(b, col("small_delta"), col("big_delta"), col("echo_time"), bvecs, n_avg, col("series", 0))


def _fmt(v) -> str:
    return "n/a" if not np.isfinite(v) else f"{float(v):.10g}"


def _broadcast(value, n: int) -> np.ndarray:
    arr = np.asarray(value, dtype=float).ravel()
    if arr.size == 1:
        return np.full(n, arr[0])
    if arr.size != n:
        raise ValueError(f"expected 1 or {n} values, got {arr.size}")
    return arr.copy()


# ---- readers ----------------------------------------------------------------------------------
def read_numbers(path, what: str) -> np.ndarray:
    """Whitespace-separated numbers of a bval/gdur/gsep-like text file (one row or one column)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the {what} file ({getattr(exc, 'strerror', None) or exc})",
                         path=path, fix="check the path and permissions", exit_code=EX_NOINPUT) from exc
    try:
        values = np.array([float(t) for t in text.split()], dtype=float)
    except ValueError as exc:
        raise InputError(f"the {what} file holds something that is not a number ({exc})", path=path,
                         fix=f"write the {what} as whitespace-separated numbers") from exc
    if values.size == 0:
        raise InputError(f"the {what} file is empty", path=path, fix=f"write one {what} per volume")
    return values


def unique_measurements(protocol: Protocol, b0_threshold: float):
    """(rows [n, 3] of the distinct (b, δ, Δ) with b > b0_threshold, their Protocol): the measurements a
    dictionary must be simulated for."""
    keep = protocol.b > b0_threshold
    rows = np.unique(np.round(np.stack([protocol.b[keep], protocol.small_delta_ms[keep],
                                        protocol.big_delta_ms[keep]], 1), 6), axis=0)
    return rows, Protocol(rows[:, 0], rows[:, 1], rows[:, 2])
