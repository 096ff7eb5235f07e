"""Group level: ROI statistics per subject/session, cohort tables (``group_<model>.tsv`` + JSON data
dictionary) and the cohort report ``group.html``. A pure aggregation of the participant-level maps:
nothing is refitted and the raw data are not read."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..bids.derivatives import find_maps, read_map, run_signature
from ..core.atomic import write_bytes as atomic_write_bytes
from ..core.atomic import write_json as atomic_write_json
from ..core.dictionary import PARAM_DESCRIPTIONS
from ..core.errors import EX_DATAERR, InputError
from ..core.roistats import (OUTLIER_MIN_N, OUTLIER_Z, STATISTICS, label_rois, robust_z, roi_statistics, sample_rows,
                             spearman_matrix)
from . import figures

FIT_ROI = "fit"
SAMPLE_VOXELS = 5000
SKIP_PARAMS = ("exitcode", "loglik", "aic", "bic")
STAT_DESCRIPTIONS = {"mean": "mean", "sd": "standard deviation (ddof 1)", "median": "median",
                     "q1": "first quartile", "q3": "third quartile", "iqr": "interquartile range q3 - q1",
                     "n": "number of voxels with a finite value"}


def read_label_names(tsv) -> dict:
    """{index: name} from a BIDS dseg TSV (columns index, name)."""
    with open(tsv, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or not {"index", "name"} <= set(rows[0]):
        raise InputError("label table needs tab-separated columns index and name", path=tsv, exit_code=EX_DATAERR,
                         fix="write a BIDS dseg TSV: a header 'index<TAB>name', one row per label")
    return {int(float(r["index"])): r["name"] for r in rows}


def _rois_of(spec: dict, ref_img) -> dict:
    """{label: boolean ROI} of one ROI source on the maps' grid (an error names the file)."""
    data, img = read_map(spec["file"])
    data = data.reshape(data.shape[:3]) if data.ndim > 3 and all(s == 1 for s in data.shape[3:]) else data
    if data.shape[:3] != ref_img.shape[:3] or not np.allclose(img.affine, ref_img.affine, atol=1e-3):
        if spec.get("kind") == "atlas":
            from nibabel.processing import resample_from_to
            data = np.asarray(resample_from_to(img, (ref_img.shape[:3], ref_img.affine), order=0).dataobj)
        else:
            raise InputError(f"ROI geometry does not match the maps (shape {data.shape[:3]} vs {ref_img.shape[:3]})",
                             path=spec["file"], exit_code=EX_DATAERR,
                             fix="resample the ROI onto the DWI grid the maps were fitted on")
    if spec.get("kind") in ("dseg", "atlas"):
        if spec.get("names"):
            names = read_label_names(spec["names"])
        else:  # an atlas without a label table: its label numbers
            names = {int(k): f"label{int(k)}" for k in np.unique(np.rint(np.nan_to_num(data))) if k != 0}
        prefix = spec.get("label", "")
        return {f"{prefix}{name}": roi for name, roi in label_rois(data, names).items()}
    return {spec["label"]: np.nan_to_num(data) > 0}


def session_statistics(out_dir, subject: str, session: str | None, roi_specs: list[dict] | None = None,
                       sample_size: int = SAMPLE_VOXELS, seed: int = 0) -> dict:
    """ROI statistics of every parameter map of a subject/session plus a voxel sample for the cohort
    correlation. roi_specs: [{"label", "file", "kind": mask|dseg|atlas, "names": TSV}]."""
    maps = find_maps(out_dir, subject, session)
    if not maps:
        raise InputError(f"no maps for sub-{subject}" + (f" ses-{session}" if session else ""), path=out_dir,
                         fix="run the participant level first", exit_code=66)
    out = {"subject": subject, "session": session or "", "rows": [], "units": {}, "sample": {}}
    ref_img = None
    fit_rois, values = {}, {}
    for model, files in sorted(maps.items()):
        params = sorted(p for (p, d) in files if d is None and p not in SKIP_PARAMS)
        for p in params:
            vol, img = read_map(files[(p, None)])
            ref_img = ref_img or img
            values[(model, p)] = vol
            side = Path(str(files[(p, None)]).replace(".nii.gz", ".json"))
            try:
                out["units"][f"{model}:{p}"] = json.loads(side.read_text()).get("Units", "")
            except (OSError, json.JSONDecodeError):
                out["units"][f"{model}:{p}"] = ""
        first = files.get(("exitcode", None)) or next(iter(files.values()))
        out.setdefault("runs", {})[model] = ":".join(run_signature(str(first).replace(".nii.gz", ".json")))
        if ("exitcode", None) in files:
            fit_rois[model] = read_map(files[("exitcode", None)])[0] == 1
        else:
            fit_rois[model] = np.isfinite(values[(model, params[0])]) if params else None
    out["identifiability"] = identifiability_rows(maps, fit_rois)
    extra = {}
    for spec in roi_specs or []:
        extra.update(_rois_of(spec, ref_img))
    for model in sorted(maps):
        fit = fit_rois.get(model)
        if fit is None:
            continue
        params = [p for (m, p) in values if m == model]
        for label, roi in [(FIT_ROI, fit)] + [(k, v & fit) for k, v in extra.items()]:
            row = {"model": model, "roi": label}
            for p in params:
                for stat, val in roi_statistics(values[(model, p)], roi).items():
                    row[f"{p}_{stat}"] = val
            out["rows"].append(row)
    union = np.zeros(ref_img.shape[:3], bool)
    for roi in fit_rois.values():
        if roi is not None:
            union |= roi
    idx = np.argwhere(union)
    idx = idx[sample_rows(len(idx), sample_size, seed)]
    for (model, p), vol in values.items():
        if p == "fobj":  # a residual, not a tissue property: not in the correlation matrix
            continue
        v = vol[tuple(idx.T)].astype(float)
        v[~fit_rois[model][tuple(idx.T)]] = np.nan
        out["sample"][f"{model}:{p}"] = [None if not np.isfinite(x) else float(x) for x in v]
    return out


def identifiability_rows(maps: dict, fit_rois: dict) -> list[dict]:
    """One row per model and parameter with a desc-contraction map: its median, 10th and 90th percentile
    over the fitted voxels and the verdict of core/fitting/posterior.py."""
    from ..core.fitting.posterior import identifiability_summary
    rows = []
    for model, files in sorted(maps.items()):
        roi = fit_rois.get(model)
        for (p, desc), f in sorted(files.items(), key=lambda kv: kv[0][0]):
            if desc != "contraction" or roi is None:
                continue
            vol = read_map(f)[0]
            summary = identifiability_summary(vol[roi].astype(float)[:, None], [p])[p]
            rows.append({"model": model, "param": p, **summary})
    return rows


def read_participants(bids_dir) -> dict:
    """{subject label: {column: value}} from participants.tsv (empty when absent)."""
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return {r["participant_id"].removeprefix("sub-"): {k: v for k, v in r.items() if k != "participant_id"}
            for r in rows if r.get("participant_id")}


def read_status(out_dir) -> dict:
    """{(participant_id, session_id): row} of the latest logs/*_status.tsv mentioning each."""
    latest: dict = {}
    for f in sorted((Path(out_dir) / "logs").glob("*_status.tsv")):
        with open(f, newline="") as fh:
            for r in csv.DictReader(fh, delimiter="\t"):
                latest[(r["participant_id"], r["session_id"])] = {**r, "log": f.name}
    return latest


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if not np.isfinite(v) else f"{v:.6g}"
    return "n/a" if v in (None, "") else str(v)


def write_tables(out_dir, results: list[dict], participants: dict) -> dict:
    """group_<model>.tsv and its JSON data dictionary per model; returns {model: tsv path}."""
    extra_cols = sorted({k for p in participants.values() for k in p})
    by_model: dict = {}
    units: dict = {}
    for res in results:
        units.update(res.get("units", {}))
        for row in res.get("rows", []):
            by_model.setdefault(row["model"], []).append((res, row))
    written = {}
    for model, rows in sorted(by_model.items()):
        params = sorted({k.rsplit("_", 1)[0] for _, r in rows for k in r if k not in ("model", "roi")})
        cols = (["participant_id", "session_id", *extra_cols, "roi", "run_options"]
                + [f"{p}_{s}" for p in params for s in STATISTICS])
        lines = ["\t".join(cols)]
        for res, r in rows:
            meta = participants.get(res["subject"], {})
            vals = [f"sub-{res['subject']}", f"ses-{res['session']}" if res["session"] else "n/a",
                    *(meta.get(c, "n/a") for c in extra_cols), r["roi"], res.get("runs", {}).get(model, "n/a")]
            vals += [_fmt(r.get(f"{p}_{s}")) for p in params for s in STATISTICS]
            lines.append("\t".join(vals))
        tsv = Path(out_dir) / f"group_{model}.tsv"
        atomic_write_bytes(tsv, ("\n".join(lines) + "\n").encode())
        dd = {"participant_id": {"Description": "subject label"},
              "session_id": {"Description": "session label (n/a without sessions)"},
              "roi": {"Description": f"region of interest: '{FIT_ROI}' = voxels fitted (exit code 1) by this model; "
                                     "other labels = derivative masks (desc-<label>_mask), label images (dseg) or "
                                     "atlas labels, intersected with the fitted voxels"},
              "run_options": {"Description": "the dmrimc-bids version and options fingerprint (sidecars' RunOptions) "
                                             "of the run that wrote this model's maps, VERSION:FINGERPRINT; rows "
                                             "differ only where the group level pooled runs (--allow-mixed-runs)"}}
        for c in extra_cols:
            dd[c] = {"Description": f"from participants.tsv ({c})"}
        for p in params:
            for s in STATISTICS:
                dd[f"{p}_{s}"] = {"Description": f"{STAT_DESCRIPTIONS[s]} of {p} "
                                                 f"({PARAM_DESCRIPTIONS.get(p, p)}) in the ROI"}
                if s != "n":
                    dd[f"{p}_{s}"]["Units"] = units.get(f"{model}:{p}", "")
        atomic_write_json(tsv.with_suffix(".json"), dd)
        written[model] = str(tsv)
    ident = write_identifiability_table(out_dir, results)
    if ident:
        written["identifiability"] = ident
    return written


#: Columns of group_identifiability.tsv after the subject/session.
IDENTIFIABILITY_COLUMNS = {
    "model": "the model whose map it is",
    "parameter": "the estimated parameter",
    "contraction_median": "median over the fitted voxels of the posterior contraction 1 - var_post/var_prior "
                          "(0: the data say nothing beyond the dictionary's range; 1: fully determined)",
    "contraction_p10": "10th percentile of the contraction over the fitted voxels",
    "contraction_p90": "90th percentile of the contraction over the fitted voxels",
    "verdict": "'not informed by the data' (median < 0.1), 'weakly informed' (< 0.5) or 'informed'"}


def write_identifiability_table(out_dir, results: list[dict]) -> str | None:
    """group_identifiability.tsv (+ JSON data dictionary): the posterior contraction of every parameter of
    every subject/session that has desc-contraction maps; None when none has."""
    lines = []
    for res in results:
        label = [f"sub-{res['subject']}", f"ses-{res['session']}" if res["session"] else "n/a"]
        for r in res.get("identifiability", []):
            lines.append("\t".join(label + [r["model"], r["param"], _fmt(r["median"]), _fmt(r["p10"]),
                                             _fmt(r["p90"]), r["verdict"]]))
    if not lines:
        return None
    tsv = Path(out_dir) / "group_identifiability.tsv"
    head = "\t".join(["participant_id", "session_id", *IDENTIFIABILITY_COLUMNS])
    atomic_write_bytes(tsv, ("\n".join([head] + lines) + "\n").encode())
    dd = {"participant_id": {"Description": "subject label"},
          "session_id": {"Description": "session label (n/a without sessions)"},
          **{k: {"Description": v} for k, v in IDENTIFIABILITY_COLUMNS.items()}}
    atomic_write_json(tsv.with_suffix(".json"), dd)
    return str(tsv)


def cohort_identifiability(results: list[dict]) -> list[dict]:
    """Per model and parameter: the median, minimum and maximum over subjects/sessions of the median
    contraction, and how many subjects/sessions the data do not inform (the group report's table)."""
    keyed: dict = {}
    for res in results:
        for r in res.get("identifiability", []):
            if r["median"] is not None:
                keyed.setdefault((r["model"], r["param"]), []).append(r)
    rows = []
    for (model, p), items in sorted(keyed.items()):
        med = np.array([r["median"] for r in items], float)
        rows.append({"model": model, "param": p, "n": len(items), "median": f"{np.median(med):.2f}",
                     "min": f"{med.min():.2f}", "max": f"{med.max():.2f}",
                     "not_informed": sum(r["verdict"].startswith("not informed") for r in items)})
    return rows


def outliers(results: list[dict]) -> list[dict]:
    """Subjects/sessions whose ROI-'fit' median of a parameter has |robust z| > OUTLIER_Z."""
    flagged = []
    keyed: dict = {}
    for res in results:
        for row in res.get("rows", []):
            if row["roi"] != FIT_ROI:
                continue
            for k, v in row.items():
                if k.endswith("_median"):
                    keyed.setdefault((row["model"], k[:-7]), []).append((res, v))
    for (model, p), items in sorted(keyed.items()):
        z = robust_z(np.array([v for _, v in items], float))
        for (res, v), zz in zip(items, z):
            if np.isfinite(zz) and abs(zz) > OUTLIER_Z:
                flagged.append({"label": _label(res), "model": model, "param": p, "median": _fmt(v),
                                "z": f"{zz:+.1f}"})
    return flagged


#: |Spearman ρ| above this between two maps is pointed out: they carry nearly the same information.
STRONG_CORRELATION = 0.95


def strong_correlations(rho: np.ndarray, names: list[str], limit: float = STRONG_CORRELATION) -> list[dict]:
    """Pairs of maps ("model:param") whose |Spearman ρ| exceeds ``limit``, strongest first."""
    pairs = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if np.isfinite(rho[i, j]) and abs(rho[i, j]) > limit:
                pairs.append({"a": names[i], "b": names[j], "rho": round(float(rho[i, j]), 3)})
    return sorted(pairs, key=lambda p: -abs(p["rho"]))


def _label(res) -> str:
    return f"sub-{res['subject']}" + (f"_ses-{res['session']}" if res["session"] else "")


def render_group(out_dir, results: list[dict], failures: list[dict], tables: dict, group_column: str | None = None,
                 participants: dict | None = None, mixed_runs: list | None = None) -> str:
    """group.html (atomic): cohort distributions, correlation matrix, outliers and failures."""
    import jinja2

    from .. import __version__
    participants = participants or {}
    flagged = outliers(results)
    flagged_labels = {(f["label"], f["model"], f["param"]) for f in flagged}
    units = {}
    for res in results:
        units.update(res.get("units", {}))
    panels = []
    keys = sorted({(row["model"], k[:-7]) for res in results for row in res["rows"] for k in row
                   if k.endswith("_median")})
    for model, p in keys:
        groups: dict = {}
        for res in results:
            cohort = participants.get(res["subject"], {}).get(group_column, "") if group_column else ""
            for row in res["rows"]:
                if row["model"] == model and f"{p}_median" in row:
                    name = row["roi"] + (f" / {cohort}" if cohort and cohort != "n/a" else "")
                    groups.setdefault(name, []).append((_label(res), row[f"{p}_median"]))
        bad = {lbl for (lbl, m, q) in flagged_labels if m == model and q == p}
        unit = units.get(f"{model}:{p}", "")
        panels.append({"model": model, "param": p, "unit": unit,
                       "img": figures.distributions(groups, unit, f"{model}: {p} (median per ROI)", bad)})
    names = sorted({k for res in results for k in res.get("sample", {})})
    corr = None
    if len(names) >= 2:
        stacked = []
        for res in results:
            n_rows = max((len(v) for v in res["sample"].values()), default=0)
            block = np.full((n_rows, len(names)), np.nan)
            for j, n in enumerate(names):
                vals = res["sample"].get(n)
                if vals:
                    block[:, j] = [np.nan if v is None else v for v in vals]
            stacked.append(block)
        cols = np.concatenate(stacked) if stacked else np.zeros((0, len(names)))
        rho = spearman_matrix(cols)
        short = [f"{n.split(':', 1)[1]} ({n.split(':', 1)[0]})" for n in names]   # fV of IVIM and of the joint fit
        corr = {"img": figures.correlation_matrix(rho, short, "Spearman ρ between parameters (voxels pooled over "
                                                              "the cohort, pairwise complete)"),
                "n": int(len(cols)), "strong": strong_correlations(rho, names)}
    env = jinja2.Environment(loader=jinja2.PackageLoader("dmrimc_bids.reports", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    env.filters["unit"] = figures.display_unit
    reports = {f"sub-{r['subject']}": f"sub-{r['subject']}.html" for r in results
               if (Path(out_dir) / f"sub-{r['subject']}.html").is_file()}
    html = env.get_template("group.html.j2").render(
        version=__version__, n_results=len(results), results=[_label(r) for r in results], panels=panels,
        reports=reports,
        corr=corr, flagged=flagged, failures=failures, tables={m: Path(t).name for m, t in tables.items()},
        identifiability=cohort_identifiability(results),
        z=OUTLIER_Z, min_n=OUTLIER_MIN_N, group_column=group_column, mixed_runs=list(mixed_runs or []))
    path = Path(out_dir) / "group.html"
    atomic_write_bytes(path, html.encode("utf-8"))
    return str(path)
