"""Group level: one ROI-statistics node per subject/session with maps, joined by the cohort tables and
report node. ROIs: the fitted voxels of each model, any desc-<label>_mask and dseg label image (with its
TSV of names) in the derivative folders, and optionally a TemplateFlow atlas (template-space inputs)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from nipype.pipeline import engine as pe

from .. import __version__
from ..core.errors import EX_NOINPUT, EX_USAGE, InputError


def atlas_spec(text: str) -> dict:
    """ROI spec of a TemplateFlow atlas 'TEMPLATE:ATLAS[:DESC[:RES]]' (from TEMPLATEFLOW_HOME; no download
    is attempted twice: a missing file gives one clear error)."""
    parts = text.split(":")
    if len(parts) < 2 or not all(parts):
        raise InputError(f"--atlas {text}", exit_code=EX_USAGE,
                         fix="give TEMPLATE:ATLAS[:DESC[:RES]], e.g. MNI152NLin2009cAsym:Schaefer2018:100Parcels7Networks:2")
    tpl, atlas = parts[0], parts[1]
    desc = parts[2] if len(parts) > 2 else None
    res = int(parts[3]) if len(parts) > 3 else None
    os.environ.setdefault("TEMPLATEFLOW_AUTOUPDATE", "0")
    try:
        from templateflow import api
    except ImportError as exc:
        raise InputError("--atlas needs the templateflow package", exit_code=EX_USAGE,
                         fix="pip install 'dmrimc-bids[atlas]'") from exc
    home = os.environ.get("TEMPLATEFLOW_HOME", "~/.cache/templateflow")
    query = {"atlas": atlas, "suffix": "dseg"}
    if desc:
        query["desc"] = desc
    try:
        nii = api.get(tpl, extension=".nii.gz", raise_empty=True, **query,
                      **({"resolution": res} if res is not None else {}))
    except Exception as exc:  # templateflow raises ConnectionError, OSError, Exception("No results found")
        raise InputError(f"--atlas {text}: not available from TEMPLATEFLOW_HOME ({type(exc).__name__}: "
                         f"{str(exc)[:160]})", path=home, exit_code=EX_NOINPUT,
                         fix="on a machine with internet, fetch it with templateflow.api.get(...) and copy the "
                             "TemplateFlow folder; set TEMPLATEFLOW_HOME to it") from None
    nii = nii if isinstance(nii, (str, os.PathLike)) else None if len(nii) != 1 else nii[0]
    tsv = None  # label names: the atlas TSV (with its desc, else without); none (HOSPA): label numbers
    for q in (query, {k: v for k, v in query.items() if k != "desc"}):
        try:
            found = api.get(tpl, extension=".tsv", raise_empty=True, **q)
        except Exception:  # not in TemplateFlow, or not fetched for offline use
            continue
        tsv = found if isinstance(found, (str, os.PathLike)) else found[0] if len(found) == 1 else None
        if tsv:
            break
    if nii is None:
        raise InputError(f"--atlas {text}: several resolutions match", exit_code=EX_USAGE,
                         fix="add the resolution: TEMPLATE:ATLAS:DESC:RES")
    return {"label": f"{atlas}-", "file": str(nii), "kind": "atlas", "names": str(tsv) if tsv else ""}


def find_rois(bids_dir, derivatives, subject: str, session: str | None) -> list[dict]:
    """ROI specs of a subject/session in the derivative folders: desc-<label>_mask and dseg (+ TSV)."""
    from bids.layout import Query

    from ..bids.layout import derivative_layouts

    specs = []
    for _, lay in derivative_layouts(Path(bids_dir), derivatives):
        for ses in ([session, Query.NONE] if session else [Query.NONE]):
            masks = lay.get(subject=subject, session=ses, suffix="mask", extension=[".nii", ".nii.gz"],
                            return_type="object")
            dsegs = lay.get(subject=subject, session=ses, suffix="dseg", extension=[".nii", ".nii.gz"],
                            return_type="object")
            for f in masks:
                specs.append({"label": f.entities.get("desc", "mask"), "file": f.path, "kind": "mask"})
            for f in dsegs:
                tsv = Path(f.path.replace(".nii.gz", ".tsv").replace(".nii", ".tsv"))
                if not tsv.is_file():
                    raise InputError("label image without its TSV of names", path=f.path, exit_code=EX_NOINPUT,
                                     fix=f"add {tsv.name} with columns index and name")
                prefix = f.entities.get("desc", "")
                specs.append({"label": f"{prefix}-" if prefix else "", "file": f.path, "kind": "dseg",
                              "names": str(tsv)})
            if masks or dsegs:
                break
    seen, unique = set(), []
    for s in specs:
        if s["file"] not in seen:
            seen.add(s["file"])
            unique.append(s)
    return unique


def init_group_wf(entries: list[tuple], out_dir, work_dir, failures: list[dict], participants: dict,
                  group_column: str | None = None, seed: int = 0, mixed_runs: list | None = None,
                  name="dmrimc_bids_group_wf"):
    """entries: [(subject, session or None, roi specs)]; mixed_runs: the options in which pooled runs differ
    (the report's banner)."""
    from ..interfaces.group import GroupReport, RoiStatistics
    from nipype.interfaces.utility import Merge

    major, minor = __version__.split(".")[:2]
    wf = pe.Workflow(name=f"{name}_{major}_{minor}", base_dir=str(work_dir))
    out_dir = str(Path(out_dir).resolve())
    join = pe.Node(Merge(len(entries)), name="collect", run_without_submitting=True)
    for k, (sub, ses, specs) in enumerate(entries, start=1):
        node = pe.Node(RoiStatistics(out_dir=out_dir, subject=sub, session=ses or "", roi_specs=specs, seed=seed),
                       name=f"roi_statistics_{sub}" + (f"_{ses}" if ses else ""), mem_gb=0.5)
        wf.connect(node, "result_file", join, f"in{k}")
    report = pe.Node(GroupReport(out_dir=out_dir, failures=failures, participants=participants,
                                 group_column=group_column or "", mixed_runs=list(mixed_runs or [])),
                     name="group_report", mem_gb=1.0)
    wf.connect(join, "out", report, "result_files")
    return wf


#: Participant-level statuses (logs/*_status.tsv) whose sessions the group level lists and leaves out.
BAD_STATUSES = ("failed", "interrupted")


def group_failures(status: dict, processed: set, expected: list[str], out_dir=None) -> list[dict]:
    """Failures to report: the latest status 'failed' or 'interrupted' of each subject/session, sessions with
    maps but no tissue maps (an incomplete participant run), and requested subjects without any
    participant-level output or status."""
    failures = []
    for (pid, sid), row in sorted(status.items()):
        if row.get("status") in BAD_STATUSES:
            failures.append({"label": pid + (f"_{sid}" if sid not in ("n/a", "") else ""),
                             "exit_code": row.get("exit_code", ""), "stage": row.get("stage", ""),
                             "status": row["status"], "message": row.get("message", ""), "log": row["log"],
                             "pair": (pid.removeprefix("sub-"), "" if sid in ("n/a", "") else sid.removeprefix("ses-"))})
    if out_dir is not None:
        from ..bids.derivatives import find_maps
        listed = {f["pair"] for f in failures}
        for sub, ses in sorted(processed):
            models = find_maps(out_dir, sub, ses)
            if (sub, ses or "") not in listed and "histousim" not in models:
                failures.append({"label": f"sub-{sub}" + (f"_ses-{ses}" if ses else ""), "exit_code": "",
                                 "stage": "participant", "status": "incomplete",
                                 "message": "incomplete participant run: maps of " + ", ".join(sorted(models))
                                            + " only, no tissue maps", "log": "", "pair": (sub, ses or "")})
    known = {pid.removeprefix("sub-") for pid, _ in status} | {s for s, _ in processed}
    for sub in expected:
        if sub not in known:
            failures.append({"label": f"sub-{sub}", "exit_code": "", "stage": "participant", "status": "missing",
                             "message": "no participant-level outputs", "log": "", "pair": (sub, "")})
    return failures


def run_options(out_dir, fingerprint: str) -> dict:
    """The options behind a run fingerprint (logs/options/<fingerprint>.json; {} where not recorded)."""
    try:
        return json.loads((Path(out_dir) / "logs" / "options" / f"{fingerprint}.json").read_text())
    except (OSError, ValueError):
        return {}


def differing_options(out_dir, signatures: list) -> list[str]:
    """'option: a | b' for every option in which the runs of these (version, fingerprint) signatures differ
    (fingerprints whose options were not recorded are named instead)."""
    opts = {fp: run_options(out_dir, fp) for _, fp in signatures}
    missing = [fp for fp, o in opts.items() if not o]
    known = [o for o in opts.values() if o]
    out = []
    for key in sorted({k for o in known for k in o}):
        values = []
        for o in known:
            v = json.dumps(o.get(key), sort_keys=True)
            if v not in values:
                values.append(v)
        if len(values) > 1:
            out.append(f"{key}: " + " | ".join(values))
    if missing:
        out.append("options not recorded for run(s) " + ", ".join(missing))
    return out


def check_one_run(out_dir, pairs, allow_mixed: bool = False) -> list[str]:
    """The options in which the pooled maps' runs differ ([] for one run): InputError (exit 65) naming them,
    unless allow_mixed (the group report then shows them in a banner)."""
    from ..bids.derivatives import find_maps, run_signature
    seen: dict = {}
    for sub, ses in pairs:
        for files in find_maps(out_dir, sub, ses).values():
            nii = files.get(("exitcode", None)) or next(iter(files.values()))
            side = Path(str(nii).replace(".nii.gz", ".json").replace(".nii", ".json"))
            seen.setdefault(run_signature(side), side)
    if len(seen) <= 1:
        return []
    diff = differing_options(out_dir, list(seen))
    if not allow_mixed:
        (sig_a, a), (sig_b, b) = list(seen.items())[:2]
        raise InputError(f"the maps come from {len(seen)} different runs (e.g. {a.name} and {b.name}) that differ in: "
                         + "; ".join(diff), path=b, exit_code=65,
                         fix="rerun the participant level of every subject with one version and one set of options, "
                             "or pass --allow-mixed-runs to pool them anyway")
    return diff


def check_group_inputs(out_dir) -> None:
    if not Path(out_dir).is_dir():
        raise InputError("output folder not found", path=out_dir, exit_code=EX_NOINPUT,
                         fix="run the participant level into it first")


def run_group(config, run_with) -> int:
    """Group level: ROI statistics of every subject/session's maps -> group_<model>.tsv + group.html;
    exit code 0 when every expected subject/session was aggregated."""
    import sys
    import tempfile

    from ..bids.derivatives import find_sessions
    from ..bids.layout import strip_prefix
    from ..reports.group import read_participants, read_status
    import shutil

    from . import execution, nipype_logging
    from .runner import remove_stale_temps

    out_dir, bids_dir = Path(config.run.out_dir), Path(config.run.bids_dir)
    check_group_inputs(out_dir)
    atlas = atlas_spec(config.inputs.atlas) if config.inputs.atlas else None
    wanted = set(strip_prefix(config.inputs.participant_label, "sub-"))
    sessions_wanted = set(strip_prefix(config.inputs.session_label, "ses-"))
    pairs = [(s, ses) for s, ses in find_sessions(out_dir)
             if (not wanted or s in wanted) and (not sessions_wanted or ses in sessions_wanted)]
    participants = read_participants(bids_dir)
    expected = sorted(wanted or set(participants) or {p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir()})
    pairs, failures, mixed = _select_sessions(config, out_dir, pairs, expected, read_status(out_dir))
    entries = _group_entries(config, pairs, atlas, failures)
    if config.inputs.group_column and participants and not any(config.inputs.group_column in p for p in participants.values()):
        raise InputError(f"--group-column {config.inputs.group_column}: not a participants.tsv column",
                         path=bids_dir / "participants.tsv", exit_code=EX_USAGE,
                         fix=f"choose among {', '.join(sorted({k for p in participants.values() for k in p}))}")
    tmp = None if config.execution.work_dir else Path(tempfile.mkdtemp(prefix="dmrimc_group_"))
    work = Path(config.execution.work_dir or tmp).resolve()
    execution.configure(run_with, work)
    nipype_logging.route(config.execution.verbose, out_dir / "logs" / "group_nipype.log")
    remove_stale_temps(out_dir)
    failures = [{k: v for k, v in f.items() if k != "pair"} for f in failures]
    wf = init_group_wf(entries, out_dir, work, failures, participants, config.inputs.group_column or None, config.execution.seed,
                       mixed)
    try:
        graph = execution.run(wf, run_with)
        res = None if graph is None else next(n for n in graph.nodes() if n.name == "group_report").result
    finally:
        if tmp is not None and run_with.local:  # a cluster's jobs still need their work dir
            shutil.rmtree(tmp, ignore_errors=True)
    if graph is None:
        print(f"dmrimc-bids: submitted the group graph to {run_with.plugin} (work dir {work}); group.html appears "
              "when its jobs finish", file=sys.stderr)
        return 0
    for f in res.outputs.failures:
        print(f"dmrimc-bids: {f['label']}: {f.get('status', 'failed')} ({f['stage']}): {f['message']}", file=sys.stderr)
    import logging
    logging.getLogger("dmrimc-bids").info(
        "dmrimc-bids: group tables %s and report %s (%d aggregated, %d failed or missing)",
        ", ".join(res.outputs.tables.values()), out_dir / "group.html", len(entries), len(res.outputs.failures))
    if res.outputs.failures and config.execution.allow_incomplete:
        print(f"dmrimc-bids: {len(res.outputs.failures)} subject/session(s) failed, interrupted, incomplete or missing "
              "(listed above and in group.html); exit 0 as --allow-incomplete asks", file=sys.stderr)
        return 0
    return 1 if res.outputs.failures else 0


def _select_sessions(config, out_dir, pairs, expected, status) -> tuple:
    """(the sessions to pool, failures, the options in which their runs differ): the failed, interrupted,
    incomplete and missing sessions (group_failures) are left out; mixed runs refused (check_one_run) unless
    --allow-mixed-runs, which warns on the terminal."""
    failures = group_failures(status, set(pairs), expected, out_dir)
    bad = {f["pair"] for f in failures}
    pairs = [(s, ses) for s, ses in pairs if (s, ses or "") not in bad]
    mixed = check_one_run(out_dir, pairs, config.execution.allow_mixed_runs)
    for line in mixed:
        print(f"dmrimc-bids: warning: pooling runs that differ in {line}", file=sys.stderr)
    return pairs, failures, mixed


def _group_entries(config, pairs, atlas, failures: list) -> list:
    """[(subject, session, ROI specs)] of the sessions with maps; a session whose ROIs cannot be found is
    added to ``failures``. InputError when none is left."""
    import sys
    entries = []
    for sub, ses in pairs:
        try:
            specs = find_rois(Path(config.run.bids_dir), [Path(d) for d in config.inputs.derivatives] or None, sub, ses)
        except InputError as exc:
            label = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
            print(f"dmrimc-bids: error: {label}: {exc}", file=sys.stderr)
            failures.append({"label": label, "exit_code": exc.exit_code, "stage": "group", "message": str(exc),
                             "log": ""})
            continue
        entries.append((sub, ses, specs + ([atlas] if atlas else [])))
    if not entries:
        raise InputError("no participant-level maps to aggregate", path=config.run.out_dir, exit_code=EX_NOINPUT,
                         fix="run the participant level first (and check --participant-label/--session-label)")
    return entries
