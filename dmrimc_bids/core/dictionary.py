"""Signal dictionaries: storage, import of the published arrays, protocol matching, parameter selection.

On disk a dictionary is ``<stem>.npz`` (``signals`` float32 [K micro-structures, M measurements],
``params`` float64 [K, P]) plus ``<stem>.json`` (parameter names, units, ranges, the protocol
table, provenance). Signals are b0-normalised (1 at b = 0).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_text
from .errors import EX_NOINPUT, EX_USAGE, InputError
from .protocol import B0_THRESHOLD, Protocol, read_numbers

from .units import PARAM_DESCRIPTIONS, PARAM_UNITS  # noqa: F401  (re-exported: the dictionary's units)
#: Column order of the published Histo-μSim parameter arrays.
HISTOUSIM_PARAM_NAMES = ("fin", "mCS", "varCS", "skewCS", "vCS_sph", "vCS_cyl", "D0in", "D0ex", "kappa")
#: Column order of the published leave-one-out arrays (shared/reference/histo_loo).
HISTOUSIM_LOO_PARAM_NAMES = ("fin", "vCS_cyl", "D0in", "D0ex", "kappa")
#: Names the published tools' files and figures give our parameters (the code spells each one one way).
PUBLISHED_ALIASES = {"vCS": "vCS_cyl"}


def canonical_name(name: str) -> str:
    """Our spelling of a parameter named by the published tools (vCS -> vCS_cyl); others unchanged."""
    return PUBLISHED_ALIASES.get(name, name)
#: Parameters always kept by a selection unless fixed (as in the published tools).
ALWAYS_KEPT = ("D0in", "D0ex", "kappa")

#: Substrates listed in full in a dictionary's description (sidecars); longer lists are summarised.
SIDECAR_MAX_SUBSTRATES = 12
#: Default matching tolerances: b [s/mm²] and δ, Δ [ms].
MATCH_TOL_B = 100.0
MATCH_TOL_MS = 2.5


def principal_components(signals: np.ndarray, rank: int, max_entries: int | None = None) -> tuple:
    """(mean [M], first ``rank`` principal directions [rank, M], orthonormal) of dictionary signals [K, M], in
    their dtype; max_entries: at most that many entries (a fixed random sample) estimate them. The one PCA of
    the project: the reduced storage (reduce_signals) and the posterior's regression adjustment use it."""
    x = np.asarray(signals)
    if max_entries is not None and len(x) > max_entries:
        x = x[np.random.default_rng(0).choice(len(x), max_entries, False)]
    mean = x.mean(0)
    return mean, np.linalg.svd(x - mean, full_matrices=False)[2][:min(rank, x.shape[1])]


def reduce_signals(signals: np.ndarray, rank: int) -> tuple:
    """(mean [M] float32, basis [rank, M] float32, scores [K, rank] float16): the signals' first ``rank``
    principal components (principal_components, in float64), the compact storage of a large dictionary (the
    discarded components carry the Monte Carlo noise and little else; benchmarks/dictionary_storage.py
    measures the error)."""
    x = np.asarray(signals, np.float64)
    mean, basis = principal_components(x, rank)
    scores = (x - mean) @ basis.T
    return mean.astype(np.float32), basis.astype(np.float32), scores.astype(np.float16)


def reconstruct_signals(mean, basis, scores) -> np.ndarray:
    """Signals [K, M] float32 from reduce_signals' components (computed in float64, rounded once)."""
    out = np.asarray(scores, np.float64) @ np.asarray(basis, np.float64) + np.asarray(mean, np.float64)
    return np.ascontiguousarray(out, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _read_dictionary_files(npz: str, mtime_ns: int, size: int, json_mtime_ns: int):
    """(signals float32, params, structure or None, the .json text) of a dictionary file, read from disk once
    per process and file version (path, modification times, size): a run that loads the embedded default in
    its preflight, graph and nodes decompresses it once per process. The arrays are read-only: every
    Dictionary of the file shares them, and selection and matching make new arrays."""
    with np.load(npz) as arrays:
        if "signal_scores" in arrays.files:   # reduced storage (principal components): reconstructed once
            signals = reconstruct_signals(arrays["signal_mean"], arrays["signal_basis"], arrays["signal_scores"])
        else:
            signals = np.ascontiguousarray(arrays["signals"], dtype=np.float32)
        params = np.ascontiguousarray(np.atleast_2d(arrays["params"]), dtype=np.float64)
        structure = np.asarray(arrays["structure"], dtype=np.int64).ravel() if "structure" in arrays.files else None
    for a in (signals, params, structure):
        if a is not None:
            a.setflags(write=False)
    return signals, params, structure, Path(npz).with_suffix(".json").read_text()


@dataclass
class Dictionary:
    """Signals of K micro-structures for M measurements, with their P tissue parameters. structure [K]
    (optional): the substrate or network each entry comes from (an integer id), so that estimators can
    leave whole structures out; without it they infer structures from the parameters
    (fitting.posterior.structure_groups)."""

    signals: np.ndarray
    params: np.ndarray
    names: list
    protocol: Protocol
    units: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    structure: np.ndarray | None = None

    def __post_init__(self):
        self.signals = np.ascontiguousarray(self.signals, dtype=np.float32)
        self.params = np.ascontiguousarray(np.atleast_2d(self.params), dtype=np.float64)
        self.names = list(self.names)
        if self.signals.ndim != 2 or self.signals.shape[0] != self.params.shape[0]:
            raise ValueError(f"signals {self.signals.shape} and params {self.params.shape} disagree in rows")
        if self.params.shape[1] != len(self.names):
            raise ValueError(f"{self.params.shape[1]} parameter columns for {len(self.names)} names")
        if self.signals.shape[1] != len(self.protocol):
            raise ValueError(f"{self.signals.shape[1]} signal columns for {len(self.protocol)} measurements")
        self.units = {n: self.units.get(n, PARAM_UNITS.get(n, "")) for n in self.names}
        if self.structure is not None:
            self.structure = np.asarray(self.structure, dtype=np.int64).ravel()
            if self.structure.size != self.signals.shape[0]:
                raise ValueError(f"{self.structure.size} structure ids for {self.signals.shape[0]} entries")

    def _rows(self, rows) -> np.ndarray | None:
        """The structure ids of the entries ``rows`` (None without ids)."""
        return None if self.structure is None else self.structure[rows]

    def __len__(self) -> int:
        return self.signals.shape[0]

    @property
    def max_b(self) -> float:
        """Largest b of the dictionary's protocol [s/mm²]."""
        return float(self.protocol.b.max())

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) of each parameter over the dictionary."""
        return self.params.min(axis=0), self.params.max(axis=0)

    def checksum(self) -> str:
        """sha256 of the signal and parameter arrays (and names): identifies the dictionary content."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.signals).tobytes())
        h.update(np.ascontiguousarray(self.params).tobytes())
        h.update(json.dumps(self.names).encode())
        return h.hexdigest()

    def describe(self) -> dict:
        """JSON-able summary for sidecars: size, parameters, ranges, provenance, checksum."""
        lo, hi = self.ranges()
        prov = dict(self.provenance)
        subs = prov.get("substrates")
        if isinstance(subs, list) and len(subs) > SIDECAR_MAX_SUBSTRATES:  # keep sidecars small
            prov["substrates"] = {"n": len(subs), "first": subs[:3],
                                  "note": "the full list is in the dictionary's .json (its checksum above)"}
        return {"Entries": len(self), "Measurements": len(self.protocol), "Parameters": self.names,
                "Units": self.units, "Ranges": {n: [float(a), float(b)] for n, a, b in zip(self.names, lo, hi)},
                "Checksum": {"sha256": self.checksum()}, "Provenance": prov}

    def summary(self) -> dict:
        """What the methods text says about the dictionary: entries, source, file, estimated and fixed
        parameters, number of substrates or networks."""
        prov = self.provenance
        subs = prov.get("substrates")
        n_subs = len(subs) if isinstance(subs, list) else (subs or {}).get("n") if isinstance(subs, dict) else None
        nets = prov.get("networks")
        selection = prov.get("selection", {})
        simulated_here = "cache_key" in prov  # simulated for this run's protocol (the file is a cache entry)
        return {"entries": len(self), "file": "" if simulated_here else prov.get("file", ""),
                "origin": "simulated for the acquired protocol" if simulated_here else prov.get("origin", ""),
                "source": prov.get("source") or prov.get("simulator", ""), "kind": prov.get("kind", ""),
                "estimated": list(selection.get("estimated", self.names)), "fixed": dict(selection.get("fixed", {})),
                "substrates": n_subs, "networks": len(nets) if isinstance(nets, list) else None}

    # ---- io -------------------------------------------------------------------------------------
    def save(self, path, rank: int | None = None) -> Path:
        """Write ``<stem>.npz`` and ``<stem>.json`` atomically; returns the .npz path. rank: store the signals
        as their first ``rank`` principal components (reduce_signals, compressed); this Dictionary's signals
        become the reconstruction that ``load`` gives, and the .json records the storage and its error."""
        stem = Path(path).with_suffix("") if Path(path).suffix in (".npz", ".json") else Path(path)
        npz, js = stem.with_suffix(".npz"), stem.with_suffix(".json")
        arrays = {"signals": self.signals}
        if rank:
            mean, basis, scores = reduce_signals(self.signals, int(rank))
            rebuilt = reconstruct_signals(mean, basis, scores)
            err = np.abs(rebuilt.astype(np.float64) - self.signals)
            self.provenance["storage"] = {"kind": "principal components", "rank": int(rank),
                                          "rms_error": float(np.sqrt(np.mean(err ** 2))),
                                          "p99_error": float(np.percentile(err, 99)), "max_error": float(err.max())}
            self.signals = rebuilt
            arrays = {"signal_mean": mean, "signal_basis": basis, "signal_scores": scores}
        lo, hi = self.ranges()
        meta = {"names": self.names, "units": self.units,
                "ranges": {n: [float(a), float(b)] for n, a, b in zip(self.names, lo, hi)},
                "protocol": self.protocol.to_rows(), "provenance": self.provenance,
                "checksum": self.checksum()}
        extra = {} if self.structure is None else {"structure": self.structure}
        with atomic_path(npz) as tmp:
            (np.savez_compressed if rank else np.savez)(tmp, params=self.params, **arrays, **extra)
        write_text(js, json.dumps(meta, indent=1))
        return npz

    @classmethod
    def load(cls, path) -> "Dictionary":
        """Read a dictionary from its ``.npz`` or ``.json`` path (or their common stem)."""
        p = Path(path)
        stem = p.with_suffix("") if p.suffix in (".npz", ".json") else p
        npz, js = stem.with_suffix(".npz"), stem.with_suffix(".json")
        if not npz.is_file():
            raise InputError("dictionary file not found", path=npz, exit_code=EX_NOINPUT,
                             fix="a dictionary is a .npz (signals, params) with a .json beside it; "
                                 "import published arrays with `dmrimc-bids-dictionary import-histousim`")
        if not js.is_file():
            raise InputError(f"the dictionary's {js.name} (names, units, protocol) is missing beside it", path=npz,
                             exit_code=EX_NOINPUT, fix="keep the .json that Dictionary.save wrote next to the .npz")
        try:
            stat, jstat = npz.stat(), js.stat()
            signals, params, structure, text = _read_dictionary_files(str(npz.resolve()), stat.st_mtime_ns,
                                                                      stat.st_size, jstat.st_mtime_ns)
            meta = json.loads(text)
            rows = meta["protocol"]
            proto = Protocol([r["b"] for r in rows], [r["small_delta"] for r in rows],
                             [r["big_delta"] for r in rows],
                             [np.nan if r.get("echo_time") is None else r["echo_time"] for r in rows])
            return cls(signals, params, meta["names"], proto, meta.get("units", {}), meta.get("provenance", {}),
                       structure)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read the dictionary ({exc})", path=npz,
                             fix="re-create it with Dictionary.save or the import command") from exc

    # ---- selection and matching -----------------------------------------------------------------
    def select(self, keep=None, fix: dict | None = None) -> "Dictionary":
        """Keep some parameters and fix others.

        keep: names to estimate (``--params``); D0in, D0ex and kappa are added unless fixed. Without
        it, the dictionary's ``provenance['default_params']`` (if any), else every parameter.
        fix: {name: value}: keep only the rows at that value and drop the column; the value must be
        on the dictionary's grid. Unknown names raise InputError (exit 64).
        """
        fix = dict(fix or {})
        for name in list(keep or []) + list(fix):
            if name not in self.names:
                raise InputError(f"unknown parameter {name!r}", exit_code=EX_USAGE,
                                 fix=f"choose among {', '.join(self.names)}")
        rows = np.ones(len(self), dtype=bool)
        for name, value in fix.items():
            col = self.params[:, self.names.index(name)]
            scale = max(np.abs(col).max(), 1e-12)
            at = np.isclose(col, float(value), rtol=0, atol=1e-6 * scale)
            if not at.any():
                grid = np.unique(col)
                shown = ", ".join(f"{g:g}" for g in grid[:20]) + (" ..." if grid.size > 20 else "")
                raise InputError(f"--fix {name}={value:g} is not on the dictionary's grid", exit_code=EX_USAGE,
                                 fix=f"use one of {shown}")
            rows &= at
        if not keep and self.provenance.get("default_params"):
            keep = [n for n in self.provenance["default_params"] if n in self.names]
        if keep:
            chosen = list(dict.fromkeys(list(keep) + [n for n in ALWAYS_KEPT if n in self.names]))
        else:
            chosen = list(self.names)
        chosen = [n for n in chosen if n not in fix]
        if not chosen:
            raise InputError("no parameter left to estimate", exit_code=EX_USAGE, fix="fix fewer parameters")
        cols = [self.names.index(n) for n in chosen]
        prov = dict(self.provenance)
        prov["selection"] = {"estimated": chosen, "fixed": {k: float(v) for k, v in fix.items()}}
        return Dictionary(self.signals[rows], self.params[np.ix_(rows, cols)], chosen, self.protocol,
                          {n: self.units[n] for n in chosen}, prov, self._rows(rows))

    def measurements(self, index) -> "Dictionary":
        """The dictionary on a subset of its measurements (column indices or a boolean mask)."""
        index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, int)
        return Dictionary(self.signals[:, index], self.params, self.names, self.protocol.subset(index), self.units,
                          dict(self.provenance), self.structure)

    def within(self, bounds: dict) -> "Dictionary":
        """The entries whose parameters lie inside {name: (lo, hi)} (physical units), e.g. the prior
        support of a posterior estimate under --bounds; InputError when none does."""
        if not bounds:
            return self
        rows = np.ones(len(self), bool)
        for name, (lo, hi) in bounds.items():
            col = self.params[:, self.names.index(name)]
            rows &= (col >= lo) & (col <= hi)
        if not rows.any():
            raise InputError("no dictionary entry lies inside --bounds " + " ".join(
                f"{k}={v[0]:g},{v[1]:g}" for k, v in bounds.items()), exit_code=EX_USAGE,
                fix="widen the bounds to overlap the dictionary's ranges")
        return Dictionary(self.signals[rows], self.params[rows], list(self.names), self.protocol, dict(self.units),
                          dict(self.provenance), self._rows(rows))

    def match(self, measured: Protocol, tol_b: float = MATCH_TOL_B, tol_ms: float = MATCH_TOL_MS,
              b0_threshold: float = B0_THRESHOLD, source=None) -> "Dictionary":
        """The dictionary's columns for a measured protocol, matched jointly on (b, δ, Δ).

        Each measurement maps to the dictionary measurement nearest in the scaled distance
        sqrt((Δb/tol_b)² + (Δδ/tol_ms)² + (ΔΔ/tol_ms)²), and only if every coordinate is within
        its tolerance (matching coordinates one by one can pick a combination the dictionary does
        not have). Measured b=0 maps to a signal of 1. The result has the measured protocol and a
        ``matching`` provenance table; InputError names every measurement without a match.
        """
        grid = TimingGrid.from_provenance(self.provenance)
        if grid is not None and len(self.protocol) == grid.size:
            inside = grid.contains(measured) | (measured.b <= b0_threshold)
            if inside.all():
                return self._interpolated(measured, grid, b0_threshold)
        d = self.protocol
        dw = d.b > b0_threshold
        cols, report, unmatched = [], [], []
        for i in range(len(measured)):
            b, sd, bd = measured.b[i], measured.small_delta_ms[i], measured.big_delta_ms[i]
            if b <= b0_threshold:
                cols.append(-1)
                report.append({"b": float(b), "dictionary": "b=0 (signal 1)"})
                continue
            db = (d.b - b) / tol_b
            dsd = (d.small_delta_ms - sd) / tol_ms
            dbd = (d.big_delta_ms - bd) / tol_ms
            dist = np.where(dw, db**2 + dsd**2 + dbd**2, np.inf)
            j = int(np.argmin(dist))
            if not (abs(db[j]) <= 1 and abs(dsd[j]) <= 1 and abs(dbd[j]) <= 1 and dw[j]):
                unmatched.append(f"b={b:g} s/mm², δ={sd:g} ms, Δ={bd:g} ms")
                continue
            cols.append(j)
            report.append({"b": float(b), "small_delta": float(sd), "big_delta": float(bd),
                           "dictionary": {"b": float(d.b[j]), "small_delta": float(d.small_delta_ms[j]),
                                          "big_delta": float(d.big_delta_ms[j]), "column": j}})
        if unmatched:
            raise InputError(
                f"no dictionary measurement within ±{tol_b:g} s/mm² and ±{tol_ms:g} ms of: " + "; ".join(unmatched),
                path=source, fix="use a dictionary simulated for this protocol (dmrimc-sim) or widen "
                                 "--match-tolerance-b/--match-tolerance-ms")
        cols = np.array(cols, dtype=int)
        sig = np.ones((len(self), cols.size), dtype=np.float32)
        sig[:, cols >= 0] = self.signals[:, cols[cols >= 0]]
        prov = dict(self.provenance)
        prov["matching"] = {"tolerance": {"b": tol_b, "ms": tol_ms}, "measurements": report,
                            "source_checksum": self.checksum()}
        return Dictionary(sig, self.params, self.names, measured, self.units, prov, self.structure)


    def _interpolated(self, measured: Protocol, grid: "TimingGrid", b0_threshold: float) -> "Dictionary":
        """The dictionary at the measured protocol, interpolated on its timing grid (TimingGrid)."""
        dwi = measured.b > b0_threshold
        sig = np.ones((len(self), len(measured)), dtype=np.float32)
        if dwi.any():
            sig[:, dwi] = grid.interpolate(self.signals, measured.b[dwi], measured.small_delta_ms[dwi],
                                           measured.big_delta_ms[dwi])
        prov = dict(self.provenance)
        prov["matching"] = {"method": "interpolated on the timing grid (bilinear in δ and Δ - δ, monotone "
                                      "cubic in b of log S)",
                            "measurements": [{"b": float(b), "small_delta": float(sd), "big_delta": float(bd)}
                                             for b, sd, bd in zip(measured.b, measured.small_delta_ms,
                                                                   measured.big_delta_ms)],
                            "source_checksum": self.checksum()}
        return Dictionary(sig, self.params, self.names, measured, self.units, prov, self.structure)


@dataclass
class TimingGrid:
    """A dictionary protocol laid out as a full grid of PGSE timings: every b of ``b`` [s/mm²] for
    every gradient duration δ of ``small_delta`` [ms] and every gap Δ - δ of ``gap`` [ms]; column
    ((i_δ·n_gap) + i_gap)·n_b + i_b. Signals between the nodes are interpolated: bilinearly in
    (δ, Δ - δ) and with a monotone cubic (PCHIP) in b of log S, through S(b=0) = 1."""

    small_delta: np.ndarray
    gap: np.ndarray
    b: np.ndarray

    def __post_init__(self):
        self.small_delta, self.gap, self.b = (np.asarray(v, float) for v in (self.small_delta, self.gap, self.b))

    @property
    def size(self) -> int:
        return self.small_delta.size * self.gap.size * self.b.size

    def protocol(self) -> Protocol:
        sd, gp, b = np.meshgrid(self.small_delta, self.gap, self.b, indexing="ij")
        return Protocol(b.ravel(), sd.ravel(), (sd + gp).ravel())

    def describe(self) -> dict:
        return {"small_delta": self.small_delta.tolist(), "gap": self.gap.tolist(), "b": self.b.tolist()}

    @classmethod
    def from_provenance(cls, prov: dict) -> "TimingGrid | None":
        g = prov.get("timing_grid")
        return None if not g else cls(g["small_delta"], g["gap"], g["b"])

    def contains(self, p: Protocol) -> np.ndarray:
        """Which measurements lie inside the grid (no extrapolation)."""
        gap = p.big_delta_ms - p.small_delta_ms
        eps = 1e-6
        return ((p.small_delta_ms >= self.small_delta[0] - eps) & (p.small_delta_ms <= self.small_delta[-1] + eps)
                & (gap >= self.gap[0] - eps) & (gap <= self.gap[-1] + eps) & (p.b <= self.b[-1] + eps)
                & (p.b > 0))

    def interpolate(self, signals, b, small_delta, big_delta) -> np.ndarray:
        """Signals [K, len(b)] at the requested measurements from grid signals [K, size]."""
        from scipy.interpolate import PchipInterpolator

        k = signals.shape[0]
        cube = np.log(np.clip(np.asarray(signals, float), 1e-6, None)).reshape(
            k, self.small_delta.size, self.gap.size, self.b.size)
        out = np.empty((k, len(b)))
        for m, (bb, sd, bd) in enumerate(zip(b, small_delta, big_delta)):
            acc = np.zeros((k, self.b.size))
            for i, wi in _weights(self.small_delta, sd):
                for j, wj in _weights(self.gap, bd - sd):
                    acc += wi * wj * cube[:, i, j, :]
            xb = np.concatenate([[0.0], self.b])
            yb = np.concatenate([np.zeros((k, 1)), acc], 1)
            out[:, m] = PchipInterpolator(xb, yb, axis=1)(bb)
        return np.exp(out)


def _weights(nodes: np.ndarray, x: float) -> list:
    """Linear interpolation weights [(index, weight), ...] of x on sorted nodes (clamped)."""
    x = float(np.clip(x, nodes[0], nodes[-1]))
    j = int(np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, nodes.size - 1))
    if j == nodes.size - 1:
        return [(j, 1.0)]
    t = (x - nodes[j]) / (nodes[j + 1] - nodes[j])
    return [(j, 1.0 - t), (j + 1, t)]


def import_histousim(ref_bval, ref_gdur, ref_gsep, signal_files, param_files, names=None,
                     provenance: dict | None = None) -> Dictionary:
    """Dictionary from the published Histo-μSim arrays.

    ref_bval/ref_gdur/ref_gsep: the reference protocol, one column per measurement (b in s/mm², δ
    and Δ in ms). signal_files/param_files: ``.npy`` arrays [rows = micro-structures], possibly split
    over several files that are stacked in the order given (pairs must agree in rows). names: the
    parameter columns; by default the published 9-column order (fin, mCS, varCS, skewCS, vCS_sph,
    vCS_cyl, D0in, D0ex, kappa) or the 5-column order of the leave-one-out arrays.
    """
    b = read_numbers(ref_bval, "b-value")
    sd = read_numbers(ref_gdur, "gradient duration")
    bd = read_numbers(ref_gsep, "gradient separation")
    if not (b.size == sd.size == bd.size):
        raise InputError(f"reference protocol has {b.size} b-values, {sd.size} δ and {bd.size} Δ",
                         path=ref_bval, fix="give one b, δ and Δ per dictionary measurement")
    signal_files, param_files = list(signal_files), list(param_files)
    if len(signal_files) != len(param_files):
        raise InputError(f"{len(signal_files)} signal files for {len(param_files)} parameter files",
                         fix="give one parameter array per signal array, in the same order")
    sigs, pars = [], []
    for fs, fp in zip(signal_files, param_files):
        s, p = _load_npy(fs), np.atleast_2d(_load_npy(fp))
        if s.ndim != 2 or s.shape[1] != b.size:
            raise InputError(f"signal array of shape {s.shape} for a {b.size}-measurement protocol", path=fs,
                             fix="rows are micro-structures, columns the reference protocol's measurements")
        if p.shape[0] != s.shape[0]:
            raise InputError(f"{p.shape[0]} parameter rows for {s.shape[0]} signal rows", path=fp,
                             fix="pair each signal array with its own parameter array")
        sigs.append(s)
        pars.append(p)
    params = np.concatenate(pars)
    if names is None:
        names = {9: HISTOUSIM_PARAM_NAMES, 5: HISTOUSIM_LOO_PARAM_NAMES}.get(params.shape[1])
        if names is None:
            raise InputError(f"{params.shape[1]} parameter columns: names unknown", path=param_files[0],
                             fix="pass the parameter names in column order")
    prov = {"source": "Histo-uSim published arrays (Grigoriou et al., Commun Biol 2025)",
            "files": [str(f) for f in signal_files + param_files]}
    prov.update(provenance or {})
    return Dictionary(np.concatenate(sigs), params, list(names), Protocol(b, sd, bd), {}, prov)


def _load_npy(path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the array ({exc})", path=path, exit_code=EX_NOINPUT,
                         fix="give a NumPy .npy file") from exc


def cached_dictionary(cache_dir, prefix: str, key_fields: dict, build) -> tuple:
    """(path, Dictionary, cached): the dictionary cached in cache_dir under sha256(key_fields + software
    version), or build() saved there (atomically) when absent. Concurrent callers with one key (sessions of
    one protocol in parallel processes) take turns on a lock file: one builds, the others read its file, so
    the file is written once and a rerun's content hashes see the same bytes."""
    import fcntl

    from .. import __version__

    key = hashlib.sha256(json.dumps({**key_fields, "version": __version__}, sort_keys=True).encode()).hexdigest()[:24]
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{prefix}_{key}.npz"
    with open(cache / f".{prefix}_{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = path.is_file() and path.with_suffix(".json").is_file()
        if not cached:
            dic = build()
            dic.provenance["cache_key"] = key
            dic.save(path)
    return path, Dictionary.load(path), bool(cached)
