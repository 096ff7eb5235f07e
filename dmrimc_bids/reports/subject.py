"""Subject report: one self-contained ``sub-<label>.html`` per subject, one section per session.

A session's part (a "fragment": tables + figures as data URIs, JSON-serialisable) is built from the
derivatives already written (maps and sidecars) plus the session's directional averages, mask and the
fit nodes' example voxels; the subject report joins the fragments with a jinja2 template.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..core.protocol import B0_THRESHOLD
from ..bids.derivatives import find_maps, model_info, read_map
from ..core.atomic import write_bytes as atomic_write_bytes
from . import figures
from .citations import methods_markdown, methods_paragraphs, pipeline_methods, references

MODEL_TITLES = {"histousim": "Tissue microstructure (Histo-μSim)", "ivim": "IVIM (perfusion fraction, pseudo-diffusion)",
                "spinflowsim": "Microvasculature (SpinFlowSim)"}
MODEL_ORDER = ("histousim", "ivim", "spinflowsim")
QUALITY = ("exitcode", "fobj")
DIAGNOSTIC = ("exitcode", "fobj", "loglik", "aic", "bic")
def _sidecar(nii: Path) -> dict:
    """A map's sidecar with its Model.Parameters expanded (the fit record and the dictionary's provenance it
    references read back: derivatives.expanded_parameters)."""
    from ..bids.derivatives import derivatives_root, expand_references
    js = Path(re.sub(r"\.nii(\.gz)?$", ".json", str(nii)))
    try:
        side = json.loads(js.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if isinstance(side.get("Model"), dict):
        side["Model"]["Parameters"] = expand_references(side["Model"].get("Parameters", {}), derivatives_root(js))
    return side


def _load(path) -> np.ndarray:
    return read_map(path)[0]


def _shell_rows(table) -> list[dict]:
    from ..core.protocol import Protocol
    p = Protocol.from_table(table)
    return [{"b": f"{r['b']:g}", "small_delta": f"{r['small_delta']:g}", "big_delta": f"{r['big_delta']:g}",
             "echo_time": "n/a" if r["echo_time"] is None else f"{r['echo_time']:g}", "n": r["n_averaged"]}
            for r in p.to_rows()]


def _protocol_rows(rows) -> list[dict]:
    return [{"b": f"{r['b']:g}", "small_delta": f"{r['small_delta']:g}", "big_delta": f"{r['big_delta']:g}",
             "echo_time": "n/a" if r.get("echo_time") is None else f"{r['echo_time']:g}",
             "n": r.get("n_averaged", 1)} for r in rows]


def b0_underlay(sph_file, shells_file, b0_threshold: float) -> np.ndarray:
    """Mean directionally averaged b≈0 image of the first TE group (the report's anatomy)."""
    from ..core.protocol import Protocol
    shells = Protocol.from_table(shells_file)
    data = _load(sph_file)
    b0 = np.flatnonzero(shells.b <= b0_threshold)
    if b0.size == 0:
        return np.nanmean(data, axis=3)
    te = shells.echo_time_ms[b0]
    first = b0[np.isclose(te, np.nanmin(te)) | np.isnan(te)] if np.isfinite(te).any() else b0
    return np.nanmean(data[..., first], axis=3)


def _summary_row(name, unit, values) -> dict:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"name": name, "unit": unit, "n": 0, "median": "n/a", "iqr": "n/a"}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"name": name, "unit": unit, "n": int(v.size), "median": f"{med:.4g}", "iqr": f"{q1:.3g} – {q3:.3g}"}


#: The report flags a parameter with more estimates on dictionary nodes than chance puts there by this
#: fraction of the voxels, or with this fraction at a bound.
PLACEMENT_WARN = 0.1


def _placement_rows(placement: dict) -> list[dict]:
    """Rows of the 'estimates on a dictionary node / at a bound' table (sidecar EstimatePlacement)."""
    rows = []
    for name, v in placement.items():
        node, bound = v.get("OnDictionaryNode"), v.get("AtBound")
        if node is None:
            continue
        chance = v.get("OnDictionaryNodeByChance") or 0.0
        rows.append({"name": name, "on_node": f"{100 * node:.1f} %", "chance": f"{100 * chance:.1f} %",
                     "at_bound": f"{100 * bound:.1f} %",
                     "flag": node - chance > PLACEMENT_WARN or bound > PLACEMENT_WARN})
    return rows


def _has_compartments(path) -> bool:
    """True when an examples file is a joint fit's (tissue and vascular compartments)."""
    if not path or not Path(path).is_file():
        return False
    voxels = json.loads(Path(path).read_text()).get("voxels") or [{}]
    return "tissue" in voxels[0]


def _example_figure(path, title) -> str | None:
    """Measured vs fitted signal of the fit node's example voxels (one line per diffusion time)."""
    if not path or not Path(path).is_file():
        return None
    ex = json.loads(Path(path).read_text())
    if not ex.get("voxels"):
        return None
    rows = ex["protocol"]
    b = np.array([r["b"] for r in rows], float)
    keys = [(r["small_delta"], r["big_delta"], r.get("echo_time")) for r in rows]
    uniq = list(dict.fromkeys(keys))
    groups = np.array([uniq.index(k) for k in keys])
    labels = [f"δ/Δ {k[0]:g}/{k[1]:g} ms" + (f", TE {k[2]:g}" if k[2] is not None else "") for k in uniq]
    vox = []
    units = ex.get("units", {})
    for v in ex["voxels"]:
        vox.append({**v, "title": f"voxel {tuple(int(i) for i in v['ijk'])}\n" + parameter_text(v["params"], units)})
    return figures.signal_panel(vox, b, "b [s/mm²]", groups, labels, title)


def parameter_text(params: dict, units: dict, per_line: int = 3) -> str:
    """'fin=0.61, vCS_cyl=12.3 µm, D0in=1.8 µm²/ms\n...': every parameter of an example voxel with its unit,
    per_line to a line (a panel title)."""
    items = [f"{k}={v:.3g}" + (f" {figures.display_unit(units[k])}" if units.get(k) else "") for k, v in params.items()]
    return "\n".join(", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line))


def _ivim_figure(norm_file, shells_file, maps: dict, mask, b_max=1200.0) -> str | None:
    """Measured S/S0 at low b of a few voxels with the IVIM model (1-fV)e^{-bD} + fV e^{-bD*}."""
    from ..core.protocol import Protocol
    need = {("fV", None), ("D", None), ("Dstar", None)}
    if not norm_file or not need <= set(maps):
        return None
    shells = Protocol.from_table(shells_file)
    te = shells.echo_time_ms
    ref = np.isclose(te, np.nanmin(te)) if np.isfinite(te).any() else np.ones(len(shells), bool)
    sel = np.flatnonzero(ref & (shells.b <= b_max))
    if sel.size < 3:
        return None
    data = _load(norm_file)
    fv, d, ds = (_load(maps[(k, None)]) for k in ("fV", "D", "Dstar"))
    s0 = _load(maps[("S0", None)]) if ("S0", None) in maps else np.ones_like(fv)
    ok = mask & np.isfinite(fv) & np.isfinite(ds)
    idx = np.argwhere(ok)
    if idx.size == 0:
        return None
    order = idx[np.argsort(fv[ok], kind="stable")]
    picks = order[np.unique(np.round(np.array([0.5, 0.9, 1.0]) * (len(order) - 1)).astype(int))]
    b = shells.b[sel]
    vox = []
    for ijk in picks:
        t = tuple(int(i) for i in ijk)
        model = s0[t] * ((1 - fv[t]) * np.exp(-b * 1e-3 * d[t]) + fv[t] * np.exp(-b * 1e-3 * ds[t]))
        vox.append({"measured": data[t][sel], "fitted": model,
                    "title": f"voxel {t}\nfV={fv[t]:.3f}, D*={ds[t]:.3g} µm²/ms"})
    return figures.signal_panel(vox, b, "b [s/mm²]", title="IVIM: measured (dots), model (lines)")


def session_fragment(out_dir, subject: str, session: str | None, protocol_file, shells_file, sph_file, mask_file,
                     norm_file="", example_files: dict | None = None, b0_threshold: float = B0_THRESHOLD,
                     warnings: list | None = None, methods: dict | None = None) -> dict:
    """Tables and figures of one subject/session (JSON-serialisable)."""
    from ..core.protocol import Protocol
    maps_by_model = find_maps(out_dir, subject, session)
    mask = _load(mask_file) > 0
    underlay = b0_underlay(sph_file, shells_file, b0_threshold)
    slices = figures.mosaic_slices(mask)
    acquired = Protocol.from_table(protocol_file)
    frag = {"session": session or "", "title": f"ses-{session}" if session else f"sub-{subject}",
            "n_volumes": len(acquired), "n_mask": int(mask.sum()), "shells": _shell_rows(shells_file),
            "warnings": list(warnings or []), "models": [], "methods": dict(methods or {})}
    for model in sorted(maps_by_model, key=lambda m: MODEL_ORDER.index(m) if m in MODEL_ORDER else 99):
        maps = maps_by_model[model]
        sect = _model_section(model, _sidecar(next(iter(maps.values()))))
        fit_mask = mask
        if ("exitcode", None) in maps:
            fit_mask = mask & (np.nan_to_num(_load(maps[("exitcode", None)])) != 0)  # NaN: not fitted
        for (param, desc), nii in sorted(maps.items(), key=lambda kv: (kv[0][0] in DIAGNOSTIC, kv[0][1] or "")):
            _add_map(sect, param, desc, nii, mask, fit_mask, underlay, slices)
        ex = (example_files or {}).get(model)
        sect["signals"] = _example_figure(ex, "measured (dots) and fitted (lines) signal; voxels at the 10th, "
                                              "50th, 90th percentile and the maximum of the residual"
                                              + ("; joint fit: tissue (dashed) and vascular (dotted) compartments"
                                                 if _has_compartments(ex) else ""))
        if model == "ivim":
            sect["signals"] = _ivim_figure(norm_file, shells_file, maps, mask)
        frag["models"].append(sect)
    frag["vascular_panel"] = vascular_panel(maps_by_model, mask)
    return frag


#: The vascular panel: (model, parameter, label) in order; a parameter missing from the run is left out.
VASCULAR_PANEL = (("ivim", "fV", "fV (IVIM estimate)"), ("spinflowsim", "fV", "fV (joint fit: headline)"),
                  ("ivim", "Dstar", "D* (IVIM)"), ("spinflowsim", "vm", "vm (SpinFlowSim)"))


def vascular_panel(maps_by_model: dict, mask) -> str | None:
    """Estimates and 95 % intervals of fV, D* and vm over the mask (interval_panel), from whichever of the
    IVIM and SpinFlowSim maps the run wrote; None when it wrote none with intervals."""
    rows = []
    for model, param, label in VASCULAR_PANEL:
        maps = maps_by_model.get(model, {})
        keys = [(param, None), (param, "ci95lo"), (param, "ci95hi")]
        if not all(k in maps for k in keys):
            continue
        est, lo, hi = (_load(maps[k])[mask] for k in keys)
        rows.append({"name": label, "unit": _sidecar(maps[(param, None)]).get("Units", ""), "est": est,
                     "lo": lo, "hi": hi})
    if not rows:
        return None
    return figures.interval_panel(rows, title="vascular maps with their 95 % intervals (a sample of the mask's "
                                              "voxels, sorted by the estimate)")


def _definitions(model: str, params: dict) -> list:
    """The section's lines on how to read it, from the sidecar of what ran: the headline fV, the flow maps'
    condition, the session's vascular prior and the one identifiability definition."""
    out = []
    joint = "JointModel" in params
    if model == "spinflowsim" and joint:
        out.append("fV here is the headline vascular fraction of this run (joint fit of every b > 0); the IVIM "
                   "section's fV is the IVIM estimate of the low-b signal alone, written for comparison.")
        out.append("vm, vs and anb are conditional on a vascular signal being present: their posteriors given fV > 0 "
                   "(map pvascular: its posterior probability); where pvascular is low they mostly repeat the flow "
                   "dictionary's prior.")
    elif model == "ivim" and params.get("ModelOfRun") == "joint":
        out.append("fV here is the IVIM estimate (bi-exponential fit of the low-b signal); the headline fV of this "
                   "run is the SpinFlowSim section's (joint fit).")
    elif model == "ivim":
        out.append("fV here is the headline vascular fraction of this run.")
    prior = params.get("VascularPrior")
    if prior:
        out.append(f"Vascular prior of this session: P(no vascular signal) {prior['PNoVascularSignal']:.3g}, mean fV "
                   f"given one {prior['SlabMeanFv']:.3g} ({prior['Source']}).")
    if params.get("IdentifiabilityDefinition"):
        out.append("Identifiability: " + params["IdentifiabilityDefinition"] + ".")
    return out


def _model_section(model: str, first_sidecar: dict) -> dict:
    """The empty report section of one model, with its fit settings from a sidecar."""
    params = first_sidecar.get("Model", {}).get("Parameters", {})
    return {"model": model, "title": MODEL_TITLES.get(model, model),
            "description": model_info(model, params).get("Description", ""),
            "url": model_info(model, params).get("URL", ""),
            "fit_method": params.get("FitMethod", ""),
            "definitions": _definitions(model, params),
            "fitted": _protocol_rows(params.get("ProtocolFitted", [])),
            "dropped": params.get("DroppedMeasurements", []),
            "notes": params.get("NormalisationNotes", []),
            "dictionary": dictionary_rows(params.get("Dictionary", {})),
            "dictionary_details": json.dumps(params.get("Dictionary", {}), indent=1, ensure_ascii=False),
            "placement": _placement_rows(params.get("EstimatePlacement", {})),
            "maps": [], "sd_maps": [], "quality": [], "summary": [], "diagnostics": []}


def dictionary_rows(d: dict) -> list[tuple[str, str]]:
    """The report's dictionary provenance as (label, text) rows: source, substrates or networks, entries,
    measurements, parameter ranges with units, seed and checksum (the whole record goes in a collapsed
    block beside it)."""
    if not d:
        return []
    prov = d.get("Provenance", {})
    units = d.get("Units", {})
    rows = [("source", prov.get("source") or prov.get("simulator") or "n/a")]
    subs = prov.get("substrates")
    if isinstance(subs, dict) and "n" in subs:
        rows.append(("substrates", f"{subs['n']} traced or generated cell substrates"))
    if prov.get("networks"):
        rows.append(("networks", f"{len(prov['networks'])} capillary networks ({prov.get('networks_source', 'given')}), "
                                 f"{prov.get('n_realisations', '?')} realisations"))
    rows.append(("entries", f"{d.get('Entries', '?')} x {d.get('Measurements', '?')} measurements"))
    grid = prov.get("timing_grid")
    if isinstance(grid, dict) and grid.get("b"):
        rows.append(("protocol coverage", f"b {min(grid['b']):g}-{max(grid['b']):g} s/mm², δ "
                                          f"{min(grid['small_delta']):g}-{max(grid['small_delta']):g} ms, Δ - δ "
                                          f"{min(grid['gap']):g}-{max(grid['gap']):g} ms (interpolated between nodes)"))
    for name, (lo, hi) in d.get("Ranges", {}).items():
        unit = figures.display_unit(units.get(name, ""))
        rows.append((name, f"{lo:.3g} – {hi:.3g}" + (f" {unit}" if unit else "")))
    walkers = prov.get("n_walkers") or prov.get("n_spins")
    if prov.get("seed") is not None:
        rows.append(("seed", f"{prov['seed']}" + (f", {walkers} {'walkers' if 'n_walkers' in prov else 'spins'}"
                                                   if walkers else "")))
    sha = d.get("Checksum", {}).get("sha256")
    if sha:
        rows.append(("checksum", f"sha256 {sha[:16]}…"))
    return rows


def _add_map(sect: dict, param: str, desc, nii, mask, fit_mask, underlay, slices) -> None:
    """Put one map into its section: a mosaic (parameter, SD, contraction, quality) and/or a summary row."""
    side = _sidecar(nii)
    unit = side.get("Units", "")
    vol = _load(nii)
    cmap = {"sd": "magma", "contraction": "cividis"}.get(desc, "viridis")
    entry = {"name": param + DESC_LABELS.get(desc, ""), "unit": unit, "description": side.get("Description", "")}
    if desc in ("ci95lo", "ci95hi"):   # the intervals: a table row, no picture
        sect["summary"].append(_summary_row(entry["name"], unit, vol[fit_mask]))
        return
    if desc == "contraction":
        sect["notes"] = list(sect["notes"]) + _not_informed(param, vol[fit_mask])
    if param in DIAGNOSTIC:
        sect["diagnostics"].append(_summary_row(param, unit, vol[fit_mask]))
        if param not in QUALITY:
            return
    entry["img"] = figures.map_mosaic(vol, underlay, fit_mask, entry["name"], unit, cmap,
                                      discrete=param == "exitcode", slices=slices)
    if param in DIAGNOSTIC:
        if param == "exitcode":
            codes, counts = np.unique(np.nan_to_num(vol[mask]).astype(int), return_counts=True)
            entry["counts"] = {int(c): int(n) for c, n in zip(codes, counts)}
        sect["quality"].append(entry)
    elif desc in ("sd", "contraction"):
        sect["sd_maps"].append(entry)
    else:
        sect["maps"].append(entry)
        sect["summary"].append(_summary_row(param, unit, vol[fit_mask]))


def _not_informed(param: str, contraction: np.ndarray) -> list:
    """A report note when the median posterior contraction of param is below 0.1, else none."""
    med = float(np.nanmedian(contraction)) if contraction.size else float("nan")
    if not med < 0.1:
        return []
    return [f"{param} is not informed by these data (median posterior contraction {med:.2f}): its map mostly "
            "repeats the prior"]


#: Labels of the uncertainty maps (desc entity) in the report.
DESC_LABELS = {"sd": " SD", "ci95lo": " 95% interval, low end", "ci95hi": " 95% interval, high end",
               "contraction": " contraction (identifiability)"}


def render_subject(subject: str, fragments: list[dict], out_file, options: dict | None = None) -> str:
    """Write the subject report (atomically) from session fragments; returns its path."""
    import jinja2

    from .. import __version__
    env = jinja2.Environment(loader=jinja2.PackageLoader("dmrimc_bids.reports", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    env.filters["unit"] = figures.display_unit
    descriptions = ran_models(fragments)
    html = env.get_template("subject.html.j2").render(
        subject=subject, fragments=sorted(fragments, key=lambda f: f["session"]), version=__version__,
        methods=methods_paragraphs(descriptions, options or {}, pipeline_methods(fragments)),
        references=references(descriptions),
        options=options or {})
    atomic_write_bytes(out_file, html.encode("utf-8"))
    return str(out_file)


def ran_models(fragments: list[dict]) -> dict:
    """{model label: description} of the models that wrote maps in these session fragments (the first
    session's description of each; every session of a run shares the options)."""
    wrote = {m["model"] for f in fragments for m in f["models"]}
    out = {}
    for f in fragments:
        for model, desc in (f.get("methods") or {}).items():
            if model in wrote and desc:
                out.setdefault(model, desc)
    return {m: out[m] for m in MODEL_ORDER if m in out}


def write_citation(out_dir, fragments: list[dict], options: dict | None = None, run_id: str | None = None) -> str:
    """logs/CITATION.md from the session fragments of the run (atomic): the methods boilerplate of the
    models that wrote maps, with references; with run_id also logs/<run_id>_CITATION.md, which later runs
    into the same folder leave alone (CITATION.md is the latest run's)."""
    text = methods_markdown(ran_models(fragments), options or {}, pipeline_methods(fragments)).encode("utf-8")
    path = Path(out_dir) / "logs" / "CITATION.md"
    if run_id:
        atomic_write_bytes(path.with_name(f"{run_id}_CITATION.md"), text)
    atomic_write_bytes(path, text)
    return str(path)
