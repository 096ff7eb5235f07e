"""BIDS-Derivatives output: names (BEP016 style), sidecars, dataset_description.json, atomic writes."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from .. import __version__
from ..core import atomic

BIDS_VERSION = "1.10.0"
MODEL_INFO = {
    "histousim": {
        "Description": "Histo-uSim: histology-informed Monte Carlo dictionary fit of directionally averaged, "
                       "b0-normalised PGSE signals (Grigoriou et al., Commun Biol 2025)",
        "URL": "https://doi.org/10.1038/s42003-025-09096-3"},
    "ivim": {
        "Description": "IVIM: vascular signal fraction fV, tissue D and pseudo-diffusion D* from the low-b signal "
                       "(Le Bihan et al., Radiology 1988)",
        "URL": "https://doi.org/10.1148/radiology.168.2.3393671"},
    "spinflowsim": {
        "Description": "SpinFlowSim: dictionary fit of the vascular signal with blood flow simulated in capillary "
                       "networks (Voronova et al., SpinFlowSim)",
        "URL": "https://github.com/radiomicsgroup/SpinFlowSim"},
}


def model_info(model: str, parameters: dict | None = None) -> dict:
    """The sidecar's Model Description and URL of the model that ran (parameters: its Model.Parameters):
    the estimator named as it ran (Bayesian or segmented IVIM; joint or separate vascular fit)."""
    info = dict(MODEL_INFO.get(model, {"Description": model}))
    p = parameters or {}
    joint = "JointModel" in p
    if model == "ivim":
        how = {"bayes": "Bayesian IVIM (grid posterior over D and D*, amplitudes projected out)",
               "segmented": "segmented IVIM (tissue D and intercept from b > b_split, tissue signal extrapolated, "
                            "vascular signal S_V = S - S_T fitted by fV, D*; OSIPI TF2.4 segmented pattern)"}
        est = p.get("IvimEstimator")
        if est in how:
            info["Description"] = f"{how[est]}: fV, D and D* from the low-b signal (Le Bihan et al., Radiology 1988)"
    elif model == "spinflowsim" and joint:
        info["Description"] = ("SpinFlowSim: the vascular compartment (fV, vm, vs, anb) of the joint tissue + vascular "
                               "posterior, against blood-flow signals simulated in capillary networks (Voronova et al., "
                               "SpinFlowSim)")
    elif model == "spinflowsim":
        info["Description"] = ("SpinFlowSim: dictionary fit of the b0-normalised vascular signal S_V/S_V(0) of IVIM "
                               "with blood flow simulated in capillary networks (Voronova et al., SpinFlowSim)")
    elif model == "histousim" and joint:
        info["Description"] = ("Histo-uSim: histology-informed Monte Carlo dictionary posterior of the tissue signal, "
                               "fitted jointly with a vascular compartment on every b > 0 (Grigoriou et al., Commun "
                               "Biol 2025)")
    return info


DIAGNOSTICS = {
    "exitcode": ("Fit exit code: 1 fitted, -1 failed or invalid data (NaN/non-positive b=0), 2 inside the mask but not "
                 "fitted because there is nothing for the model (no vascular signal: IVIM fV below its minimum; its "
                 "parameters NaN); NaN outside the mask, as in every map", ""),
    "fobj": ("Objective at the optimum: mean squared residual of the offset-Gaussian model + regularisation", ""),
    "loglik": ("Gaussian log-likelihood at the optimum (sigma from the noise map, or its ML estimate)", ""),
    "aic": ("Akaike information criterion 2P - 2 logL", ""),
    "bic": ("Bayesian information criterion P ln M - 2 logL", ""),
}
BIDSIGNORE = ["*_dwimap.*", "*.html", "logs/", "figures/", "group_*", "*_fitrecord.json"]
#: Sidecar parameters that describe a session's fit at length: written once per session and model in its fit
#: record (<prefix>_model-<model>_fitrecord.json), referenced from each sidecar as FitRecord {File, SHA256}.
FIT_RECORD_KEYS = ("ProtocolFitted", "ProtocolMatching", "DroppedMeasurements", "NormalisationNotes",
                   "EstimatePlacement", "Identifiability", "IdentifiabilityDefinition", "DictionaryModelErrorRMS",
                   "IntervalCalibration", "JointModel", "VascularPrior")
#: Where the dictionaries' provenance lives (one file per dictionary, named by its content's SHA-256; under logs/,
#: which the BIDS validator accepts in a derivatives folder, where a top-level folder of our own is an error).
PROVENANCE_DIR = "logs/dictionaries"
STATUS_COLUMNS = ("participant_id", "session_id", "status", "exit_code", "stage", "failed_voxels", "message")



def check_output_folder(path, flag: str = "output folder") -> None:
    """InputError (exit 73) unless ``path`` is a writable folder or can be created as one; creates nothing,
    so a run refused later leaves no folder behind."""
    from ..core.errors import EX_CANTCREAT, InputError
    path = Path(path).expanduser().absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"the {flag} cannot be created: {probe} is a file", path=path, exit_code=EX_CANTCREAT,
                         fix="give a folder path that is not under a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == path else f"cannot be created in {probe} (not writable)"
        raise InputError(f"the {flag} {what}", path=path, exit_code=EX_CANTCREAT,
                         fix="give a folder you can write to (a read-only mount cannot hold the derivatives)")

def bids_label(name: str) -> str:
    """Parameter name as a BIDS label (alphanumeric): vCS_cyl -> vCScyl."""
    return re.sub(r"[^a-zA-Z0-9]", "", name)


def fit_record_path(out_dir, subject, session, model, space="dwi") -> Path:
    """<out>/sub-<l>[/ses-<l>]/dwi/sub-<l>[_ses-<l>]_space-<s>_model-<m>_fitrecord.json (split_parameters)."""
    nii = map_path(out_dir, subject, session, model, "x", space=space)
    return nii.with_name(nii.name.split("_param-")[0] + "_fitrecord.json")


def map_path(out_dir, subject, session, model, param, desc=None, ext=".nii.gz", space="dwi") -> Path:
    """<out>/sub-<l>[/ses-<l>]/dwi/sub-<l>[_ses-<l>]_space-<s>_model-<m>_param-<p>[_desc-<d>]_dwimap<ext>
    (BEP016 names; ``space`` is the input DWI's, "dwi" for raw data)."""
    base = Path(out_dir) / f"sub-{subject}"
    stem = f"sub-{subject}"
    if session:
        base, stem = base / f"ses-{session}", f"{stem}_ses-{session}"
    stem += f"_space-{space}_model-{model}_param-{bids_label(param)}" + (f"_desc-{desc}" if desc else "") + "_dwimap"
    return base / "dwi" / (stem + ext)


_MAP_RE = re.compile(r"_model-(?P<model>[a-zA-Z0-9]+)_param-(?P<param>[a-zA-Z0-9]+)(?:_desc-(?P<desc>[a-zA-Z0-9]+))?"
                     r"_dwimap\.nii(?:\.gz)?$")
_SUBSES_RE = re.compile(r"^sub-(?P<sub>[a-zA-Z0-9]+)(?:_ses-(?P<ses>[a-zA-Z0-9]+))?_space-")


def find_maps(out_dir, subject: str, session: str | None) -> dict:
    """{model: {(param, desc or None): NIfTI path}} of a subject/session's derivatives (map_path names)."""
    folder = map_path(out_dir, subject, session, "x", "x").parent
    stem = f"sub-{subject}" + (f"_ses-{session}" if session else "") + "_space-"
    out: dict = {}
    for f in sorted(folder.glob(stem + "*_model-*_dwimap.nii*")):
        m = _MAP_RE.search(f.name)
        if m:
            out.setdefault(m["model"], {})[(m["param"], m["desc"])] = f
    return out


def read_map(path):
    """(float32 data, nibabel image) of a derivative map or ROI image."""
    import nibabel as nib
    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32), img


def find_sessions(out_dir) -> list[tuple[str, str | None]]:
    """Sorted (subject, session or None) pairs that have maps in a derivatives folder."""
    found = set()
    for f in Path(out_dir).glob("sub-*/**/dwi/sub-*_dwimap.nii*"):
        m = _SUBSES_RE.match(f.name)
        if m and _MAP_RE.search(f.name):
            found.add((m["sub"], m["ses"]))
    return sorted(found, key=lambda t: (t[0], t[1] or ""))


def publish(staged: dict) -> list[str]:
    """Move staged files {final_path: temp_path} into place (each by an atomic rename)."""
    done = []
    for final, tmp in staged.items():
        Path(final).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        done.append(str(final))
    return done


def stage_copy(src, final) -> str:
    """Copy src next to its final place under a hidden temporary name; returns the temp path."""
    fd, tmp = atomic.temp_beside(Path(final))
    try:
        os.close(fd)
        fd = None
        shutil.copyfile(src, tmp)
    except BaseException:
        atomic.discard(fd, tmp)
        raise
    return tmp


def stage_json(obj, final) -> str:
    """Write obj as JSON next to its final place under a hidden temporary name; returns the temp path."""
    fd, tmp = atomic.temp_beside(Path(final))
    try:
        with os.fdopen(fd, "wb") as fh:
            fd = None
            fh.write(json_bytes(obj))   # the bytes a SHA-256 reference to this file is computed from
    except BaseException:
        atomic.discard(fd, tmp)
        raise
    return tmp


def map_sidecar(model: str, name: str, unit: str, description: str, parameters: dict, sources: list) -> dict:
    """Sidecar of one map: Description, Units, Model (BEP016 draft), SkullStripped, Sources."""
    return {"Description": description, "Units": unit, "SkullStripped": False,
            "Model": {**model_info(model, parameters), "Parameters": parameters},
            "Sources": sources, "GeneratedBy": {"Name": "dmrimc-bids", "Version": __version__,
                                                "Description": f"random seed {parameters.get('Seed', 0)}"},
            "ParameterName": name}


def project_url() -> str:
    """The project's code URL: $DMRIMC_PROJECT_URL (the container images set it from their build argument
    SOURCE), else a Project-URL of the installed package's metadata, else "" (the field is left out rather
    than filled with a guess)."""
    if os.environ.get("DMRIMC_PROJECT_URL"):
        return os.environ["DMRIMC_PROJECT_URL"]
    from importlib import metadata
    try:
        urls = metadata.metadata("dmrimc-bids").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return ""
    return urls[0].split(",", 1)[-1].strip() if urls else ""


def retire_outputs(out_dir, subject: str, session: str | None, run_id: str) -> list[Path]:
    """Move a subject/session's existing maps and sidecars to logs/previous/<run_id>/ (same relative
    paths) before a run writes its own, so that reports and group tables only ever see one run's results.
    Returns the files moved."""
    out_dir = Path(out_dir)
    folder = map_path(out_dir, subject, session, "x", "x").parent
    stem = f"sub-{subject}" + (f"_ses-{session}" if session else "") + "_space-"
    moved = []
    records = sorted(folder.glob(stem + "*_model-*_fitrecord.json"))   # the maps' fit records go with them
    for f in sorted(folder.glob(stem + "*_dwimap.*")) + records:
        if f not in records and not _MAP_RE.search(f.name.replace(".json", ".nii.gz")):
            continue
        dest = out_dir / "logs" / "previous" / run_id / f.relative_to(out_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, dest)
        moved.append(dest)
    return moved


def write_dataset_description(out_dir, bids_dir, seed=None, command=None, links: dict | None = None,
                              run: dict | None = None) -> None:
    """dataset_description.json (derivative; our GeneratedBy first, then the input's; ``DatasetLinks``
    {name: folder} naming the datasets of the sidecars' bids:<name>:<path> Sources) and .bidsignore.
    run: {"id", "options", "subjects"} of this run: GeneratedBy then lists every run of dmrimc-bids into the
    folder (earlier runs' entries are kept, this run's replaces its own), each with its command."""
    out_dir = Path(out_dir)
    ours = {"Name": "dmrimc-bids", "Version": __version__,
            "Description": "histology-informed dMRI microstructure maps"
                           + (f"; run {run['id']}" if run else "")
                           + (f"; subjects {', '.join(run['subjects'])}" if run and run.get("subjects") else "")
                           + (f"; options {run['options']}" if run and run.get("options") else "")
                           + (f"; seed {seed}" if seed is not None else "")
                           + (f"; command: {command}" if command else "")}
    earlier = []
    old_desc = out_dir / "dataset_description.json"
    if run and old_desc.is_file():
        try:
            earlier = [g for g in json.loads(old_desc.read_text()).get("GeneratedBy", [])
                       if isinstance(g, dict) and g.get("Name") == "dmrimc-bids" and "; run " in g.get("Description", "")
                       and f"; run {run['id']}" not in g.get("Description", "")]
        except (OSError, ValueError, AttributeError):
            earlier = []
    url = project_url()
    if url:
        ours["CodeURL"] = url
    from .provenance import container_type
    kind = container_type()   # Apptainer's own variables win over the Docker image's baked-in ENV
    if kind:
        ours["Container"] = {"Type": kind, **({"Tag": os.environ["DMRIMC_CONTAINER_TAG"]}
                                              if os.environ.get("DMRIMC_CONTAINER_TAG") else {})}
    generated = [ours] + earlier
    src_desc = Path(bids_dir) / "dataset_description.json"
    name = "dmrimc-bids derivatives"
    if src_desc.is_file():
        try:
            src = json.loads(src_desc.read_text())
            generated += [g for g in src.get("GeneratedBy", []) if isinstance(g, dict)]
            name = f"dmrimc-bids derivatives of {src.get('Name', Path(bids_dir).name)}"
        except (json.JSONDecodeError, AttributeError):
            pass
    links = {k: Path(v).resolve().as_uri() for k, v in (links or {"raw": bids_dir}).items()}
    desc = {"Name": name, "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative", "GeneratedBy": generated,
            "SourceDatasets": [{"URL": u} for u in links.values()], "DatasetLinks": links}
    atomic.write_json(out_dir / "dataset_description.json", desc)
    ignore = out_dir / ".bidsignore"
    lines = ignore.read_text().splitlines() if ignore.is_file() else []
    atomic.write_bytes(ignore, ("\n".join(dict.fromkeys(lines + BIDSIGNORE)) + "\n").encode())


def json_bytes(obj) -> bytes:
    """The JSON text (indent 2, the sidecars' format) of obj, as written."""
    return (json.dumps(obj, indent=2, default=atomic.jsonable) + "\n").encode()


def split_parameters(params: dict, out_dir, record_path: Path) -> tuple[dict, dict]:
    """(the sidecars' Parameters, {file: JSON object} to write beside them): the dictionary's provenance
    (params['Dictionary']) goes to logs/dictionaries/dictionary-<sha16>.json, once for every session fitted with it,
    and the session's long fit description (FIT_RECORD_KEYS) to record_path; each sidecar keeps a reference
    {File (relative to out_dir), SHA256} to both, so that it stays short (a few KB) and readable."""
    import hashlib
    out_dir = Path(out_dir)
    short, files = dict(params), {}
    if isinstance(short.get("Dictionary"), dict) and short["Dictionary"]:
        blob = json_bytes(short["Dictionary"])
        sha = hashlib.sha256(blob).hexdigest()
        path = out_dir / PROVENANCE_DIR / f"dictionary-{sha[:16]}.json"
        files[path] = short["Dictionary"]
        short["Dictionary"] = {"File": str(path.relative_to(out_dir)), "SHA256": sha}
    record = {k: short.pop(k) for k in FIT_RECORD_KEYS if k in short}
    if record:
        files[Path(record_path)] = record
        short["FitRecord"] = {"File": str(Path(record_path).relative_to(out_dir)),
                              "SHA256": hashlib.sha256(json_bytes(record)).hexdigest()}
    return short, files


def expanded_parameters(sidecar, out_dir=None) -> dict:
    """A map sidecar's Model.Parameters with its references read back (expand_references; out_dir: the
    derivatives folder, default: found from the sidecar's path). {} when the sidecar cannot be read."""
    sidecar = Path(sidecar)
    try:
        params = json.loads(sidecar.read_text()).get("Model", {}).get("Parameters", {})
    except (OSError, ValueError):
        return {}
    return expand_references(params, out_dir or derivatives_root(sidecar))


def derivatives_root(path) -> Path | None:
    """The derivatives folder holding a file under its sub-<label>/ folder (None outside one)."""
    return next((p.parent for p in Path(path).parents if p.name.startswith("sub-")), None)


def expand_references(params: dict, root) -> dict:
    """params with the fit record's fields merged in and Dictionary replaced by the provenance it points to
    (split_parameters' references, relative to root); a missing referenced file leaves the reference."""
    params = dict(params)

    def read(ref):
        try:
            return json.loads((Path(root) / ref["File"]).read_text()) if root is not None else None
        except (OSError, ValueError, KeyError, TypeError):
            return None
    record = read(params.get("FitRecord"))
    if isinstance(record, dict):
        params.update(record)
    ref = params.get("Dictionary")
    dictionary = read(ref) if isinstance(ref, dict) and "File" in ref else None
    if isinstance(dictionary, dict):
        params["Dictionary"] = dictionary
    return params


def run_signature(sidecar) -> tuple[str, str]:
    """(software version, options fingerprint) a map's sidecar records ("?" where absent)."""
    try:
        side = json.loads(Path(sidecar).read_text())
    except (OSError, ValueError):
        return "?", "?"
    params = side.get("Model", {}).get("Parameters", {})
    return str(side.get("GeneratedBy", {}).get("Version", "?")), str(params.get("RunOptions", "?"))


def write_status(out_dir, run_id: str, rows: list[dict]) -> Path:
    """logs/<run_id>_status.tsv: one row per subject/session (finished or failed, exit code, stage, the
    fitted voxels whose fit failed per model, message), written atomically."""
    lines = ["\t".join(STATUS_COLUMNS)]
    for r in rows:
        lines.append("\t".join(str(r.get(c, "")).replace("\t", " ").replace("\n", " ") for c in STATUS_COLUMNS))
    path = Path(out_dir) / "logs" / f"{run_id}_status.tsv"
    atomic.write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
