"""Acquisition protocol: per-measurement b-value and gradient timing.

Units inside the core: b in s/mm², gradient duration δ (``small_delta_ms``), separation Δ
(``big_delta_ms``) and echo time (``echo_time_ms``) in ms. BIDS sidecars store times in seconds
(``SmallDelta``/``BigDelta``/``EchoTime``, bids-specification PR #2309; ``LargeDelta`` is read as
``BigDelta``, as QSIRecon does); the original Histo-μSim tools use per-volume ``.gdur``/``.gsep``
text files in ms. Everything here is plain numpy: no nipype, no pybids.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: b at or below this [s/mm²] is b = 0: b ≈ 0 as acquired (a nominal 0, rounding). Low b such as 5-20 s/mm²
#: are IVIM data, never b0 (the b0 normalisation and the IVIM fit both rely on it).
B0_THRESHOLD = 2.0

from .errors import EX_DATAERR, EX_NOINPUT, EX_USAGE, InputError

#: Proton gyromagnetic ratio [rad/(s·T)].
GAMMA_RAD_PER_S_PER_T = 2.6752218744e8

#: A sidecar time above this many seconds is taken to be a value written in ms by mistake.
MAX_PLAUSIBLE_SECONDS = 1.0
#: A time given to us in ms below this is taken to be a value written in seconds by mistake.
MIN_PLAUSIBLE_MS = 0.2

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

    def gradient_strength_mT_per_m(self) -> np.ndarray:
        """PGSE gradient amplitude G [mT/m] from b = (γGδ)²(Δ - δ/3)."""
        b_si = self.b * 1e6  # s/m²
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.sqrt(b_si / (self.diffusion_time_ms() * 1e-3)) / (GAMMA_RAD_PER_S_PER_T * self.small_delta_ms * 1e-3)
        return np.where(self.b > 0, g * 1e3, 0.0)

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


def read_bvecs(path, n_volumes: int) -> np.ndarray:
    """FSL-style bvec file (3 rows x N, or N rows x 3) as [N, 3] unit vectors (zeros kept)."""
    values = read_numbers(path, "bvec")
    if values.size != 3 * n_volumes:
        raise InputError(f"{values.size // 3 if values.size % 3 == 0 else values.size / 3:g} gradient "
                         f"directions for {n_volumes} volumes", path=path,
                         fix="give one direction (3 numbers) per volume, as in the .bval file")
    text_rows = [r for r in Path(path).read_text().splitlines() if r.strip()]
    vecs = values.reshape(3, n_volumes).T if len(text_rows) == 3 else values.reshape(n_volumes, 3)
    return vecs


def _per_volume(values, n: int, what: str, source, fix: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, dtype=float)).ravel()
    if arr.size == 1:
        return np.full(n, arr[0])
    if arr.size != n:
        raise InputError(f"{what} has {arr.size} values for {n} volumes", path=source, fix=fix)
    return arr


#: Sidecar keys of the gradient timing, first hit wins: (key, unit). SmallDelta/BigDelta are the BIDS
#: proposal's (bids-specification PR #2309, seconds); LargeDelta is QSIRecon's/HBCD's spelling;
#: DiffusionGradientDuration/Separation and the proposal's earlier DiffGradientDuration/Separation (ms) are
#: written by converters; DwGradDur/DwGradSep (ms) are Bruker ParaVision's PVM_DwGradDur/PVM_DwGradSep.
SMALL_DELTA_KEYS = (("SmallDelta", "s"), ("DiffusionGradientDuration", "s"), ("DiffGradientDuration", "ms"),
                    ("PVM_DwGradDur", "ms"), ("DwGradDur", "ms"))
BIG_DELTA_KEYS = (("BigDelta", "s"), ("LargeDelta", "s"), ("DiffusionGradientSeparation", "s"),
                  ("DiffGradientSeparation", "ms"), ("PVM_DwGradSep", "ms"), ("DwGradSep", "ms"))


def timing_from_sidecar(meta: dict, n_volumes: int, source=None, original_files=None):
    """(δ, Δ, TE) in ms from a DWI sidecar (one number or one per volume; Nones for missing fields).

    Reads the keys of SMALL_DELTA_KEYS/BIG_DELTA_KEYS (seconds, or ms where the key says so) and
    ``EchoTime`` (s). A preprocessed sidecar without top-level timing (QSIPrep drops what differed between
    the runs it concatenated) is completed from its ``SourceMetadata`` {source file: sidecar}: per volume
    through ``original_files`` (each volume's source file, QSIPrep's confounds ``original_file`` column),
    or as one value when every source run agrees. Values in seconds above 1 s are refused as probably
    written in ms.
    """
    out = []
    for keys in (SMALL_DELTA_KEYS, BIG_DELTA_KEYS, (("EchoTime", "s"),)):
        key, unit = next(((k, u) for k, u in keys if meta.get(k) is not None), (None, None))
        if key is None:
            out.append(None)
            continue
        out.append(_timing_values(meta[key], key, unit, n_volumes, source))
    if (out[0] is None or out[1] is None) and isinstance(meta.get("SourceMetadata"), dict):
        src = _from_source_metadata(meta["SourceMetadata"], n_volumes, source, original_files)
        out = [o if o is not None else s for o, s in zip(out, src)]
    return tuple(out)


def _timing_values(value, key: str, unit: str, n_volumes: int, source) -> np.ndarray:
    """One timing field as ms per volume (checked)."""
    try:
        arr = _per_volume(value, n_volumes, key, source,
                          f"give {key} as one number or one number per volume (in {'ms' if unit == 'ms' else 'seconds'})")
    except (TypeError, ValueError) as exc:
        raise InputError(f"{key} is not a number or a list of numbers", path=source,
                         fix=f"write {key} in {'ms, e.g. 14.3' if unit == 'ms' else 'seconds, e.g. 0.0143'}") from exc
    if unit == "ms":
        return arr
    if np.any(arr > MAX_PLAUSIBLE_SECONDS):
        raise InputError(f"{key} = {np.max(arr):g} looks like milliseconds, but BIDS sidecars use seconds",
                         path=source, fix=f"write {key} in seconds (e.g. {np.max(arr) / 1000:g})")
    return arr * 1000.0


def _from_source_metadata(sources: dict, n_volumes: int, path, original_files=None):
    """(δ, Δ, TE) in ms from QSIPrep's SourceMetadata {source file: its sidecar}; Nones when absent."""
    per_source = {Path(str(name)).name: timing_from_sidecar(m, 1, path) for name, m in sources.items()
                  if isinstance(m, dict)}
    if not per_source:
        return None, None, None
    if original_files is not None:
        if len(original_files) != n_volumes:
            raise InputError(f"the confounds' original_file column has {len(original_files)} rows for {n_volumes} "
                             "volumes", path=path, fix="give the desc-confounds_timeseries.tsv of this DWI")
        out = []
        for k in range(3):
            col = []
            for name in original_files:
                t = per_source.get(Path(str(name)).name)
                if t is None:
                    raise InputError(f"original_file {name} is not in the sidecar's SourceMetadata", path=path,
                                     fix="give the sidecar and confounds file QSIPrep wrote together")
                col.append(np.nan if t[k] is None else float(t[k][0]))
            out.append(None if np.all(np.isnan(col)) else np.array(col))
        return tuple(out)
    out = []
    for k, name in enumerate(("δ", "Δ", "TE")):
        values = {None if t[k] is None else round(float(t[k][0]), 6) for t in per_source.values()}
        if len(values) > 1 and k < 2:
            raise InputError(f"the runs in SourceMetadata differ in {name} ({', '.join(sorted(map(str, values)))} ms) "
                             "and nothing maps volumes to runs", path=path,
                             fix="keep QSIPrep's desc-confounds_timeseries.tsv (column original_file) beside the DWI, "
                                 "or give per-run timing with --timing")
        v = values.pop() if len(values) == 1 else None
        out.append(None if v is None else np.full(n_volumes, v))
    return tuple(out)


# ---- per-run timing given on the command line ----------------------------------------------------------
def parse_run_timing(items) -> dict:
    """--timing items -> {run key: (δ, Δ) [ms]}. An item is KEY:δ,Δ (ms), or a TSV file with columns
    run, small_delta, big_delta (ms). KEY is an entity of the DWI file name (run-2, acq-long) or the file
    name itself."""
    out = {}
    for item in items or []:
        item = str(item)
        if ":" not in item and Path(item).is_file():
            out.update(_timing_table(Path(item)))
            continue
        key, _, values = item.rpartition(":")
        try:
            small, big = (float(v) for v in values.split(","))
        except ValueError:
            raise InputError(f"--timing {item}", exit_code=EX_USAGE,
                             fix="give RUN:δ,Δ in ms (e.g. run-1:10,25), or a TSV with columns run, small_delta, "
                                 "big_delta") from None
        if not key or not 0 < small <= big:
            raise InputError(f"--timing {item}", exit_code=EX_USAGE, fix="give RUN:δ,Δ with 0 < δ <= Δ (ms)")
        out[key] = (small, big)
    return out


def _timing_table(path: Path) -> dict:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or not {"run", "small_delta", "big_delta"} <= set(rows[0]):
        raise InputError("the timing table needs tab-separated columns run, small_delta, big_delta (ms)", path=path,
                         exit_code=EX_USAGE, fix="add that header row")
    return parse_run_timing([f"{r['run']}:{r['small_delta']},{r['big_delta']}" for r in rows])


def run_timing_for(dwi_file, timing: dict):
    """(δ, Δ) [ms] that --timing gives this DWI file, or None. A key matches the file's name, its name
    without extension, or one of its entities (``run-2`` matches ``sub-01_run-2_dwi.nii.gz``)."""
    name = Path(str(dwi_file)).name
    stem = name.split(".")[0]
    hits = [k for k in timing if k in (name, stem) or k in stem.split("_")]
    if len(hits) > 1:
        raise InputError(f"--timing keys {', '.join(hits)} all match {name}", path=dwi_file, exit_code=EX_USAGE,
                         fix="give one key per run")
    return timing[hits[0]] if hits else None


def read_protocol(bval_path, n_volumes: int, *, bvec_path=None, sidecar: dict | None = None,
                  sidecar_path=None, gdur_path=None, gsep_path=None,
                  small_delta_ms: float | None = None, big_delta_ms: float | None = None,
                  b0_threshold: float = B0_THRESHOLD, run_timing=None, original_files=None) -> Protocol:
    """Build and check the per-volume protocol of one DWI series.

    Timing precedence: this run's ``run_timing`` (δ, Δ) (``--timing``, ms; numbers or per-volume arrays) > explicit
    ``small_delta_ms``/``big_delta_ms`` (command line, ms) > ``.gdur``/``.gsep`` files (ms) > the JSON
    sidecar (s; QSIPrep's SourceMetadata with ``original_files``, see timing_from_sidecar). Raises InputError naming the file and
    the fix on count mismatches, missing timing, negative values, Δ < δ or unit mix-ups.
    """
    b = read_numbers(bval_path, "b-value")
    if b.size != n_volumes:
        raise InputError(f"{b.size} b-values for {n_volumes} volumes", path=bval_path,
                         fix="give exactly one b-value per volume of the DWI series")
    if np.any(b < 0) or not np.all(np.isfinite(b)):
        raise InputError("negative or non-finite b-value", path=bval_path, fix="b-values are >= 0 s/mm²")
    bvecs = read_bvecs(bvec_path, n_volumes) if bvec_path is not None else None

    meta = sidecar or {}
    sd_s, bd_s, te = timing_from_sidecar(meta, n_volumes, sidecar_path, original_files)
    small, big, src_small, src_big = sd_s, bd_s, sidecar_path, sidecar_path
    if gdur_path is not None:
        small, src_small = _per_volume(read_numbers(gdur_path, "gradient duration"), n_volumes,
                                       "gradient duration δ", gdur_path, "give one δ (ms) per volume"), gdur_path
    if gsep_path is not None:
        big, src_big = _per_volume(read_numbers(gsep_path, "gradient separation"), n_volumes,
                                   "gradient separation Δ", gsep_path, "give one Δ (ms) per volume"), gsep_path
    for value, name in ((small_delta_ms, "--small-delta"), (big_delta_ms, "--big-delta")):
        if value is not None and 0 < value < MIN_PLAUSIBLE_MS:
            raise InputError(f"{name} {value:g} looks like seconds, but it is read in ms",
                             fix=f"give {name} in ms (e.g. {value * 1000:g})", exit_code=EX_USAGE)
    if run_timing is not None:  # (δ, Δ): one number or one per volume
        small, big = (_per_volume(v, n_volumes, "--timing", bval_path, "give --timing per run") for v in run_timing)
        src_small = src_big = "--timing"
    else:
        if small_delta_ms is not None:
            small, src_small = np.full(n_volumes, float(small_delta_ms)), "--small-delta"
        if big_delta_ms is not None:
            big, src_big = np.full(n_volumes, float(big_delta_ms)), "--big-delta"

    if small is None or big is None:
        missing = " and ".join(n for n, v in (("SmallDelta (δ)", small), ("BigDelta (Δ)", big)) if v is None)
        raise InputError(
            f"no gradient timing: {missing} missing for this DWI series", path=sidecar_path or bval_path,
            fix="add SmallDelta/BigDelta (seconds) to the DWI JSON sidecar, or pass --timing RUN:δ,Δ per run or "
                "--small-delta/--big-delta (ms); preprocessed data (e.g. QSIPrep) drops timing that differed between concatenated runs, "
                "so take it from the raw sidecars", exit_code=EX_NOINPUT)

    _check_timing(b > b0_threshold, small, big, src_small, src_big)
    return Protocol(b, small, big, np.full(n_volumes, np.nan) if te is None else te, bvecs)


def _check_timing(dw, small, big, src_small, src_big) -> None:
    """InputError for negative, missing or zero δ/Δ of a diffusion-weighted volume (dw), or Δ < δ."""
    for arr, name, src in ((small, "δ", src_small), (big, "Δ", src_big)):
        if np.any(~np.isfinite(arr[dw])) or np.any(arr < 0):
            raise InputError(f"negative or missing gradient timing {name}", path=src,
                             fix=f"give {name} > 0 for every diffusion-weighted volume")
        if np.any(arr[dw] == 0):
            raise InputError(f"gradient timing {name} is 0 for a diffusion-weighted volume", path=src,
                             fix=f"give {name} > 0 for every diffusion-weighted volume")
    bad = np.flatnonzero(dw & (big < small))
    if bad.size:
        raise InputError(f"Δ < δ for volume(s) {', '.join(map(str, bad[:10]))} "
                         f"(Δ={big[bad[0]]:g} ms, δ={small[bad[0]]:g} ms)", path=src_big,
                         fix="check that BigDelta/SmallDelta are not swapped: Δ is the separation of the "
                             "gradient pulses' leading edges and cannot be shorter than their duration δ")


def load_sidecar(path) -> dict:
    """JSON sidecar as a dict, with a clear error if it does not parse."""
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except OSError as exc:
        raise InputError(f"cannot read the sidecar ({exc.strerror})", path=path,
                         fix="check the path and permissions", exit_code=EX_NOINPUT) from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"the JSON sidecar does not parse ({exc.msg}, line {exc.lineno})", path=path,
                         fix="repair the JSON syntax") from exc
    if not isinstance(meta, dict):
        raise InputError("the JSON sidecar is not an object", path=path, fix="write a JSON object {...}")
    return meta


__all__ = ["Protocol", "read_protocol", "read_numbers", "read_bvecs", "timing_from_sidecar", "parse_run_timing",
           "run_timing_for",
           "load_sidecar", "GAMMA_RAD_PER_S_PER_T", "EX_DATAERR"]


def unique_measurements(protocol: Protocol, b0_threshold: float):
    """(rows [n, 3] of the distinct (b, δ, Δ) with b > b0_threshold, their Protocol): the measurements a
    dictionary must be simulated for."""
    keep = protocol.b > b0_threshold
    rows = np.unique(np.round(np.stack([protocol.b[keep], protocol.small_delta_ms[keep],
                                        protocol.big_delta_ms[keep]], 1), 6), axis=0)
    return rows, Protocol(rows[:, 0], rows[:, 1], rows[:, 2])
