"""Find each subject/session's DWI, timing files, mask and noise map with pybids."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import EX_NOINPUT, EX_USAGE, InputError

EXIT_NO_FILES = 18  # BIDS-Apps draft: entity-based filtering selected no files


@dataclass(frozen=True)
class DwiRun:
    """One DWI series and the files that describe it ("" where it has none): the .bval (b [s/mm²]), .bvec,
    JSON sidecar (SmallDelta/BigDelta [s], EchoTime [s]), .gdur/.gsep (δ/Δ [ms]) and, for a preprocessed
    series, the QSIPrep confounds table naming its source runs."""
    dwi: str
    bval: str
    bvec: str = ""
    sidecar: str = ""
    gdur: str = ""
    gsep: str = ""
    confounds: str = ""

    #: The columns in the order of ReadProtocol's list inputs (``<column>_files``).
    COLUMNS = ("dwi", "bval", "bvec", "sidecar", "gdur", "gsep", "confounds")


def run_columns(runs) -> dict:
    """{"dwi_files": [...], "bval_files": [...], ...}: rows of DwiRun as the per-column file lists a Nipype node
    hashes by content (ReadProtocol); '' where a run has no such file."""
    return {f"{c}_files": [getattr(r, c) for r in runs] for c in DwiRun.COLUMNS}


@dataclass
class SessionInputs:
    """Everything the participant workflow needs for one subject (and session): its DWI runs as rows."""

    subject: str
    session: str | None
    runs: tuple = ()
    mask_file: str = ""
    sigma_file: str = ""
    entities: dict = field(default_factory=dict)
    #: how the mask was chosen (the rule that picked it, or that the app builds one)
    mask_origin: str = ""
    #: the dataset each DWI comes from: (name in DatasetLinks, its root folder)
    dataset: tuple = ("raw", "")

    def __post_init__(self):
        self.runs = tuple(self.runs)

    @property
    def dwi_files(self) -> list:
        """The DWI series, one per run."""
        return [r.dwi for r in self.runs]

    @property
    def space(self) -> str:
        """The DWI's space entity (a preprocessed series' ``space-T1w``), "dwi" for raw data."""
        return self.entities.get("space") or "dwi"

    @property
    def label(self) -> str:
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")


def strip_prefix(labels, prefix):
    return [lbl[len(prefix):] if lbl.startswith(prefix) else lbl for lbl in labels or []]


def load_filters(path) -> dict:
    """--bids-filter-file: {"dwi": {entity: value}}; null means 'absent', "*" means 'any'."""
    from bids.layout import Query

    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the BIDS filter file ({exc})", path=path, exit_code=EX_USAGE,
                         fix='write JSON like {"dwi": {"acquisition": "multidelta"}}') from exc
    flt = raw.get("dwi", raw) if isinstance(raw, dict) else None
    if not isinstance(flt, dict):
        raise InputError("the BIDS filter file is not a JSON object", path=path, exit_code=EX_USAGE,
                         fix='write JSON like {"dwi": {"acquisition": "multidelta"}}')
    return {k: Query.NONE if v is None else Query.ANY if v == "*" else v for k, v in flt.items()}


#: Without --mask-label, several candidate masks are chosen by desc label in this order (tumour before brain).
MASK_PREFERENCE = ("tumour", "tumor", "lesion", "roi", "brain")


def derivative_layouts(bids_dir: Path, derivatives):
    """(root, BIDSLayout) of each ``--derivatives`` folder, in the order given. Folders under
    bids_dir/derivatives are read only when named: masks and σ maps are never taken unasked."""
    from bids import BIDSLayout

    layouts = []
    for r in [Path(d) for d in derivatives or []]:
        if not r.is_dir():
            raise InputError("derivatives folder not found", path=r, exit_code=EX_NOINPUT, fix="check --derivatives")
        layouts.append((r, BIDSLayout(str(r), validate=False, is_derivative=True)))
    return layouts


def dataset_name(root, taken=()) -> str:
    """Name of a derivatives folder in BIDS URIs (bids:<name>:<path>) and DatasetLinks: its folder name as
    a label, made unique among ``taken``."""
    base = re.sub(r"[^A-Za-z0-9_-]", "", Path(root).name) or "derivatives"
    name, k = base, 2
    while name in taken or name == "raw":
        name, k = f"{base}{k}", k + 1
    return name


def collect_inputs(bids_dir, derivatives=None, participant_label=None, session_label=None, filters=None,
                   validate=True, mask_label=None, mask_file=None, sigma_file=None) -> list[SessionInputs]:
    """One SessionInputs per subject/session with DWI, in subject order.

    DWI comes from the ``--derivatives`` folders (``desc-preproc_dwi``, as QSIPrep writes) when
    they hold one for the subject/session, else from the raw dataset. Masks (``desc-<label>_mask``)
    and σ maps (``desc-sigma``) are looked up in the ``--derivatives`` folders only (never unasked), in the
    DWI's space; several masks are chosen by ``--mask-label`` or MASK_PREFERENCE; with none, the app builds
    one from the b=0 intensity (``mask_origin`` says which).
    """
    from bids import BIDSLayout
    from bids.exceptions import BIDSValidationError

    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise InputError("BIDS dataset folder not found", path=bids_dir, exit_code=EX_NOINPUT, fix="check bids_dir")
    try:  # no database_path: the index is an in-memory SQLite private to this run (parallel runs never share it)
        raw = BIDSLayout(str(bids_dir), validate=validate)
    except BIDSValidationError as exc:
        raise InputError(f"not a valid BIDS dataset ({exc})", path=bids_dir, exit_code=16,
                         fix="add dataset_description.json or pass --skip-bids-validation") from exc
    ders = derivative_layouts(bids_dir, derivatives)
    explicit = ders
    names = {}
    for r, _ in ders:
        names[str(r)] = dataset_name(r, set(names.values()) | {"raw"})
    filters = dict(filters or {})
    subjects = raw.get_subjects() or []
    for _, lay in explicit:
        subjects = sorted(set(subjects) | set(lay.get_subjects()))
    wanted = strip_prefix(participant_label, "sub-")
    if wanted:
        missing = [s for s in wanted if s not in subjects]
        if missing:
            raise InputError(f"participant(s) {', '.join(missing)} not in the dataset", path=bids_dir,
                             exit_code=EX_NOINPUT, fix=f"choose among {', '.join(subjects) or '(none)'}")
        subjects = wanted
    sessions_wanted = strip_prefix(session_label, "ses-")
    by_subject = {sub: sorted(set(raw.get_sessions(subject=sub)) |
                              {s for _, lay in explicit for s in lay.get_sessions(subject=sub)}) or [None]
                  for sub in subjects}
    _check_sessions(sessions_wanted, by_subject, bids_dir, bool(wanted))
    out = []
    for sub in subjects:
        sessions = by_subject[sub]
        for ses in sessions:
            if sessions_wanted and ses not in sessions_wanted:
                continue
            files, lay_used = _session_dwi(raw, explicit, sub, ses, filters)
            if not files:
                continue
            item = _session_item(sub, ses, files, lay_used)
            root = next((r for r, lay in ders if lay is lay_used), bids_dir)
            item.dataset = (names.get(str(root), "raw"), str(Path(root).resolve()))
            out.append(_add_mask_and_sigma(item, ders, mask_label, mask_file, sigma_file))
    if not out:
        raise InputError("no DWI series found for the requested participants/sessions/filters", path=bids_dir,
                         exit_code=EXIT_NO_FILES, fix="check --participant-label, --session-label, "
                                                       "--bids-filter-file and --derivatives")
    return out


def _check_sessions(wanted: list, by_subject: dict, bids_dir, chosen_subjects: bool) -> None:
    """InputError listing the sessions there are when --session-label names one that no (chosen) subject has."""
    if not wanted:
        return
    known = sorted({s for ses in by_subject.values() for s in ses if s})
    missing = [s for s in wanted if s not in known]
    if missing:
        raise InputError(f"session(s) {', '.join(missing)} not in the dataset"
                         + (f" for participant(s) {', '.join(by_subject)}" if chosen_subjects else ""), path=bids_dir,
                         exit_code=EX_NOINPUT, fix=f"choose among {', '.join(known) or '(no sessions)'}")


def _add_mask_and_sigma(item: SessionInputs, ders, mask_label, mask_file, sigma_file) -> SessionInputs:
    """The session's mask (--mask, else the --derivatives rule of _find_mask) and σ map (--noise-map, else a
    desc-sigma map of the --derivatives folders in the DWI's space)."""
    sub, ses = item.subject, item.session
    if mask_file:
        item.mask_file, item.mask_origin = str(mask_file), "--mask"
    else:
        item.mask_file, item.mask_origin = _find_mask(ders, sub, ses, mask_label, item.space)
    item.sigma_file = str(sigma_file) if sigma_file else _find_one(ders, sub, ses, item.space, desc="sigma")
    return item


def _session_dwi(raw, explicit, sub, ses, filters: dict):
    """(DWI files, the layout holding them) of a subject/session: the first --derivatives folder with a
    desc-preproc DWI, else the raw dataset's (files without a desc entity)."""
    from bids.layout import Query

    q = dict(subject=sub, session=ses if ses else Query.NONE, datatype="dwi", suffix="dwi",
             extension=[".nii", ".nii.gz"], **filters)
    for _, lay in explicit:
        files = lay.get(desc="preproc", return_type="object", **q)
        if files:
            return files, lay
    files = raw.get(return_type="object", **q)
    return [f for f in files if "desc" not in f.entities], raw


def _session_item(sub, ses, files, layout) -> SessionInputs:
    files = sorted(files, key=lambda f: f.path)
    runs = []
    for f in files:
        stem = re.sub(r"\.nii(\.gz)?$", "", f.path)
        b = Path(stem + ".bval")
        if not b.is_file():
            try:
                b = Path(layout.get_bval(f.path))
            except Exception as exc:
                raise InputError("no .bval file for this DWI", path=f.path, exit_code=EX_NOINPUT,
                                 fix="add the .bval beside the NIfTI (one b-value per volume)") from exc
        if Path(stem + ".bvec").is_file():
            bvec = str(Path(stem + ".bvec"))
        else:  # inherited, or none: then the file it should be (read_protocol refuses it where b > 0)
            bvec = str(_lookup("the .bvec file", f.path, _inherited_bvec, layout, f.path) or stem + ".bvec")
        js = Path(stem + ".json")
        if js.is_file():
            side = str(js)
        else:
            meta = _lookup("the JSON sidecar", f.path, layout.get_metadata, f.path)
            side = _inherited_sidecar(layout, f) if meta else ""
        runs.append(DwiRun(f.path, str(b), bvec, side, stem + ".gdur" if Path(stem + ".gdur").is_file() else "",
                           stem + ".gsep" if Path(stem + ".gsep").is_file() else "", _confounds_file(stem)))
    ent = {k: v for k, v in files[0].entities.items() if k in ("subject", "session", "space")}
    return SessionInputs(sub, ses, runs, entities=ent)


def _confounds_file(stem: str) -> str:
    """QSIPrep's desc-confounds_timeseries.tsv of a desc-preproc DWI (its original_file column maps each
    volume to its source run), "" when there is none."""
    if "_desc-preproc_dwi" not in stem:
        return ""
    base = stem.replace("_desc-preproc_dwi", "_desc-confounds_timeseries.tsv")
    for cand in (base, re.sub(r"_space-[A-Za-z0-9]+", "", base)):
        if Path(cand).is_file():
            return cand
    return ""


def _inherited_bvec(layout, path) -> str:
    """The .bvec that BIDS inheritance applies to a DWI, "" when there is none (pybids raises IndexError)."""
    try:
        return layout.get_bvec(path) or ""
    except IndexError:
        return ""


def _inherited_sidecar(layout, f) -> str:
    """The nearest JSON sidecar that BIDS inheritance applies to this file ("" if none)."""
    near = _lookup("the inherited JSON sidecar", f.path, layout.get_nearest, f.path, extension=".json",
                   suffix="dwi", strict=False, all_=False)
    return near or ""


def _lookup(what: str, path, fn, *args, **kwargs):
    """fn(*args, **kwargs), a pybids look-up of a DWI's companion file; a failure of the look-up itself
    (unreadable file, broken index) is an InputError naming the DWI, not a silently missing file."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - pybids raises many types; all mean the same to the user
        raise InputError(f"could not look up {what}: {type(exc).__name__}: {exc}", path=path, exit_code=EX_NOINPUT,
                         fix="check that the dataset's files are readable, or pass --skip-bids-validation "
                             "and the files beside the NIfTI") from exc


def _in_space(hits: list, space: str) -> list:
    """The hits in the DWI's space (files without a space entity count as the DWI's own grid)."""
    def file_space(h):
        m = re.search(r"_space-([A-Za-z0-9]+)_", Path(h).name)
        return m.group(1) if m else None
    return [h for h in hits if file_space(h) in (space, None) or space == "dwi" and file_space(h) == "dwi"]


def _find_one(ders, sub, ses, space="dwi", **query) -> str:
    from bids.layout import Query

    for _, lay in ders:
        hits = _in_space(lay.get(subject=sub, session=ses if ses else Query.NONE,
                                 extension=[".nii", ".nii.gz"], return_type="file", **query), space)
        if hits:
            return hits[0]
    return ""


def _find_mask(ders, sub, ses, label, space="dwi") -> tuple[str, str]:
    """(mask file or "", how it was chosen). ``label`` (--mask-label) picks desc-<label>; otherwise one
    candidate is used as it is and several are chosen by MASK_PREFERENCE (tumour before brain)."""
    from bids.layout import Query

    hits = []
    for _, lay in ders:
        q = dict(subject=sub, session=ses if ses else Query.NONE, suffix="mask", extension=[".nii", ".nii.gz"],
                 return_type="object")
        if label:
            q["desc"] = label
        hits += [f for f in lay.get(**q) if _in_space([f.path], space)]
    where = f"sub-{sub}" + (f" ses-{ses}" if ses else "")
    if label:
        if not hits:
            raise InputError(f"no desc-{label}_mask for {where} in space {space}", exit_code=EX_NOINPUT,
                             fix="check --mask-label and --derivatives")
        return hits[0].path, f"--mask-label {label}"
    if len(hits) == 1:
        return hits[0].path, "the only mask in the --derivatives folders"
    for pref in MASK_PREFERENCE:
        chosen = [f for f in hits if f.entities.get("desc") == pref]
        if chosen:
            others = ", ".join(Path(f.path).name for f in hits if f is not chosen[0])
            return chosen[0].path, f"desc-{pref} preferred by the rule {' > '.join(MASK_PREFERENCE)} over {others}"
    if hits:
        raise InputError(f"several masks for {where}: {', '.join(Path(f.path).name for f in hits)}",
                         exit_code=EX_USAGE, path=Path(hits[0].path).parent,
                         fix="choose one with --mask-label <desc label>")
    return "", "none given: built from the mean b=0 intensity (above 10 % of its 98th percentile)"
