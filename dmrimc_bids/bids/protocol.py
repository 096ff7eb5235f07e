"""Acquisition metadata -> Protocol: BIDS DWI sidecars, FSL bval/bvec, the published tools' .gdur/.gsep
and QSIPrep's provenance (SourceMetadata, the confounds' original_file), with --timing per run.

BIDS sidecars store times in seconds (``SmallDelta``/``BigDelta``/``EchoTime``, bids-specification PR #2309;
``LargeDelta`` is read as ``BigDelta``, as QSIRecon does); the original Histo-μSim tools use per-volume
``.gdur``/``.gsep`` text files in ms. Every error names the file and the fix (core.errors.InputError).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..core.errors import EX_NOINPUT, EX_USAGE, InputError
from ..core.protocol import B0_THRESHOLD, Protocol, read_numbers
from .images import load_image

#: A sidecar time above this many seconds is taken to be a value written in ms by mistake.
MAX_PLAUSIBLE_SECONDS = 1.0
#: A time given to us in ms below this is taken to be a value written in seconds by mistake.
MIN_PLAUSIBLE_MS = 0.2


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
    if bvec_path is not None and not Path(bvec_path).is_file():
        if np.any(b > b0_threshold):
            raise InputError("no .bvec file for this DWI series (its diffusion-weighted volumes need their gradient "
                             "directions)", path=bvec_path, exit_code=EX_NOINPUT,
                             fix="add the .bvec beside the NIfTI (3 rows, one direction per volume, as in the .bval)")
        bvec_path = None   # a b = 0-only series has no directions
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


# ---- a session's series: headers, sidecars and QSIPrep's provenance -----------------------------------
def series_protocol(dwi_file, bval_file, bvec_file=None, sidecar_file=None, gdur_file=None, gsep_file=None,
                    small_delta_ms=None, big_delta_ms=None, b0_threshold=B0_THRESHOLD, run_timing=None, confounds_file=None):
    """Protocol of one DWI series, checked against its NIfTI header (no voxel data read)."""
    img = load_image(dwi_file, "DWI")
    if len(img.shape) != 4:
        raise InputError(f"the DWI is {len(img.shape)}D {img.shape}, a 4D series (x, y, z, volumes) is needed",
                         path=dwi_file, fix="give the 4D diffusion series, not a single volume or a derived map")
    meta = load_sidecar(sidecar_file) if sidecar_file else {}
    return read_protocol(bval_file, img.shape[3], bvec_path=bvec_file, sidecar=meta, sidecar_path=sidecar_file,
                         gdur_path=gdur_file, gsep_path=gsep_file, small_delta_ms=small_delta_ms,
                         big_delta_ms=big_delta_ms, b0_threshold=b0_threshold, run_timing=run_timing,
                         original_files=original_files(confounds_file) if confounds_file else None)


def original_files(confounds_file) -> list:
    """Each volume's source file: the ``original_file`` column of QSIPrep's desc-confounds_timeseries.tsv."""
    import csv
    with open(confounds_file, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or "original_file" not in rows[0]:
        raise InputError("the confounds file has no original_file column", path=confounds_file,
                         fix="give the desc-confounds_timeseries.tsv QSIPrep wrote with this DWI")
    return [r["original_file"] for r in rows]


def session_protocols(runs, small_delta_ms=None, big_delta_ms=None, timing=None, b0_threshold=B0_THRESHOLD) -> list:
    """The protocol of each run of a session (series_protocol; runs: rows of bids.layout.DwiRun). Per-run
    ``timing`` ({key: (δ, Δ)} ms, run_timing_for) wins over one ``small_delta_ms``/``big_delta_ms`` for every
    volume, and that one is refused (usage error) when the runs' own metadata say their timing or TE differ."""
    per_run = [run_timing_for(r.dwi, timing or {}) or _source_run_timing(r.confounds, timing) for r in runs]
    if (small_delta_ms is not None or big_delta_ms is not None) and None in per_run:
        _refuse_shared_timing([(r.dwi, r.sidecar, r.gsep, r.confounds) for r, rt in zip(runs, per_run) if rt is None])
    return [series_protocol(r.dwi, r.bval, r.bvec or None, r.sidecar or None, r.gdur or None, r.gsep or None,
                            small_delta_ms, big_delta_ms, b0_threshold, rt, r.confounds or None)
            for r, rt in zip(runs, per_run)]


def _source_run_timing(confounds_file, timing):
    """Per-volume (δ, Δ) [ms] of a preprocessed series that concatenates runs, from --timing keyed by its
    source runs (QSIPrep's confounds original_file), or None."""
    if not confounds_file or not timing:
        return None
    sources = original_files(confounds_file)
    per_volume = [run_timing_for(f, timing) for f in sources]
    if not any(per_volume):
        return None
    missing = sorted({Path(f).name for f, t in zip(sources, per_volume) if t is None})
    if missing:
        raise InputError(f"--timing gives no timing for the source run(s) {', '.join(missing)}", path=confounds_file,
                         exit_code=EX_USAGE, fix="give --timing for every run the preprocessed series concatenates")
    return np.array([t[0] for t in per_volume]), np.array([t[1] for t in per_volume])


def _refuse_shared_timing(runs: list) -> None:
    """InputError when one --small-delta/--big-delta would be given to runs [(dwi, sidecar, gsep, confounds)]
    whose own metadata (sidecar or .gsep Δ, sidecar TE) say they differ."""
    described = []
    values = lambda a: tuple(np.unique(np.round(a[np.isfinite(a)], 3))) if a is not None else None  # noqa: E731
    for dwi, sidecar, gsep, confounds in runs:
        meta = load_sidecar(sidecar) if sidecar else {}
        sources = meta.get("SourceMetadata") if isinstance(meta.get("SourceMetadata"), dict) else {}
        for name, source_meta in sources.items():  # a preprocessed series: the runs it concatenates
            _, big, te = timing_from_sidecar(source_meta if isinstance(source_meta, dict) else {}, 1, sidecar)
            described.append((Path(str(name)).name, values(big), values(te)))
        if sources:
            continue
        n = load_image(dwi, "DWI").shape[-1]
        _, big, te = timing_from_sidecar(meta, n, sidecar, original_files(confounds) if confounds else None)
        if gsep:
            big = read_numbers(gsep, "gradient separation")
        described.append((Path(dwi).name, values(big), values(te)))
    differ = any(len({d[k] for d in described if d[k] is not None}) > 1 for k in (1, 2))
    if differ:
        show = lambda v: "/".join(f"{x:g}" for x in v) if v else "?"  # noqa: E731
        runs_text = "; ".join(f"{name}: Δ {show(big)} ms, TE {show(te)} ms" for name, big, te in described)
        raise InputError(f"--small-delta/--big-delta would give every run one timing, but the runs differ "
                         f"({runs_text})", path=runs[0][0], exit_code=EX_USAGE,
                         fix="give each run its timing: --timing run-1:δ,Δ run-2:δ,Δ (ms), or a TSV with columns "
                             "run, small_delta, big_delta")


def read_simulation_protocol(path, bval=None) -> Protocol:
    """The protocol a simulator synthesises: a TSV (core.waveforms.read_protocol_table: PGSE, TRSE or sampled
    waveforms), or a DWI JSON sidecar (timing in s) with its ``.bval`` beside it (or given as ``bval``), every
    measurement then a PGSE of its (δ, Δ)."""
    from ..core.waveforms import read_protocol_table

    path = Path(path)
    if path.suffix != ".json":
        return read_protocol_table(path)
    if not path.is_file():
        raise InputError("protocol file not found", path=path, exit_code=EX_NOINPUT,
                         fix="give a TSV (b, small_delta, big_delta) or a DWI .json sidecar with its .bval")
    bval = Path(bval) if bval else path.with_suffix(".bval")
    if not bval.is_file():
        raise InputError("the sidecar's .bval was not found", path=bval, exit_code=EX_NOINPUT,
                         fix="put the .bval beside the .json or pass --bval")
    n = read_numbers(bval, "b-value").size
    return read_protocol(bval, n, sidecar=load_sidecar(path), sidecar_path=path)
