"""The app as a Nipype workflow a lab's own pipeline connects its files to, without a BIDS layout.

    from dmrimc_bids.workflows import init_dmrimc_wf
    dmrimc = init_dmrimc_wf("/data/derivatives/dmrimc-bids", subject="01", seed=7)
    lab_wf.connect(preproc, "out_file", dmrimc, "inputnode.dwi_file")   # and bval/bvec/json/mask files

The inputnode takes one session's DWI (4D NIfTI), its .bval/.bvec, a JSON sidecar with SmallDelta,
BigDelta (s, one value or one per volume) and EchoTime, and optionally a mask and a noise σ map. The
session's graph, the BIDS App's own (participant.init_participant_wf with every option of Config), runs
inside the node ``run_dmrimc`` once the files exist, because the graph's shape (which model, whether the
vascular branch runs) follows the protocol in those files; it writes the same BIDS-Derivatives maps, sidecars,
report and dataset_description.json into output_dir as the app writes for that subject. outputnode:
out_files (every map and sidecar written), report_file.
"""

from __future__ import annotations

from nipype.interfaces.utility import Function, IdentityInterface
from nipype.pipeline import engine as pe

from ..core.errors import EX_USAGE, InputError
from ..options import BY_NAME
from .config import Config

INPUT_FIELDS = ("dwi_file", "bval_file", "bvec_file", "json_file", "mask_file", "sigma_file")


def init_dmrimc_wf(output_dir, subject: str, session: str | None = None, name: str = "dmrimc_wf",
                   **options) -> pe.Workflow:
    """A workflow with inputnode fields INPUT_FIELDS (mask_file, sigma_file optional) that writes the app's
    derivatives for sub-<subject>[_ses-<session>] into output_dir. options: the app's options by name
    (dmrimc_bids/options.py, docs/usage.md; e.g. seed=7, model="separate", estimator="posterior",
    vascular="off"); an unknown name is an InputError (exit 64)."""
    known = set(BY_NAME) - {"out_dir", "bids_dir", "analysis_level"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"init_dmrimc_wf: unknown option(s) {', '.join(unknown)}", exit_code=EX_USAGE,
                         fix="use the option names of dmrimc_bids/options.py (docs/usage.md, the options table)")
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(fields=list(INPUT_FIELDS)), name="inputnode")
    inputnode.inputs.mask_file = ""
    inputnode.inputs.sigma_file = ""
    run = pe.Node(Function(input_names=[*INPUT_FIELDS, "output_dir", "subject", "session", "options"],
                           output_names=["out_files", "report_file"], function=run_session), name="run_dmrimc")
    run.inputs.output_dir = str(output_dir)
    run.inputs.subject = str(subject).removeprefix("sub-")
    run.inputs.session = "" if session is None else str(session).removeprefix("ses-")
    run.inputs.options = dict(options)
    outputnode = pe.Node(IdentityInterface(fields=["out_files", "report_file"]), name="outputnode")
    wf.connect([(inputnode, run, [(f, f) for f in INPUT_FIELDS]),
                (run, outputnode, [("out_files", "out_files"), ("report_file", "report_file")])])
    return wf


def run_session(dwi_file, bval_file, bvec_file, json_file, mask_file, sigma_file, output_dir, subject, session,
                options):
    """Nipype Function of init_dmrimc_wf (self-contained: Nipype rebuilds it from its source): run the app's
    graph for one session's files; returns (the maps and sidecars written, the subject report)."""
    from dmrimc_bids.workflows.embed import session_outputs
    return session_outputs(dwi_file, bval_file, bvec_file, json_file, mask_file, sigma_file, output_dir, subject,
                           session, options)


def session_outputs(dwi_file, bval_file, bvec_file, json_file, mask_file, sigma_file, output_dir, subject, session,
                    options) -> tuple[list, str]:
    """What run_session does, importable: preflight, the participant graph (Linear, in this node's folder),
    dataset_description.json; InputError on bad input."""
    import os
    from pathlib import Path

    from ..bids.derivatives import write_dataset_description
    from ..bids.layout import DwiRun, SessionInputs
    from .participant import init_participant_wf
    from .plan import plan_session
    from .runner import default_cache_dir, describe_failed_voxels, failed_voxels, new_run_id

    item = SessionInputs(subject=subject, session=session or None,
                         runs=[DwiRun(str(dwi_file), str(bval_file), str(bvec_file), str(json_file))],
                         mask_file=str(mask_file or ""), sigma_file=str(sigma_file or ""),
                         mask_origin="the lab workflow's mask_file" if mask_file else "")
    config = Config.from_dict(options or {}, out_dir=str(Path(output_dir).absolute())).validate()
    work = Path(os.getcwd()) / "work"
    if not config.execution.sim_cache_dir:   # simulated dictionaries are cached beside the graph, as the app does
        config = config.replace(sim_cache_dir=default_cache_dir(work))
    plan = plan_session(item, config)   # the preflight: InputError on bad input, before any output
    run_id = new_run_id()
    write_dataset_description(config.run.out_dir, "", config.execution.seed, "init_dmrimc_wf",
                              run={"id": run_id, "options": config.options_fingerprint(), "subjects": [item.label]})
    wf = init_participant_wf([plan], config, work)
    # the app's execution settings for this graph only (the lab's own workflow keeps its own): a dictionary
    # .npz keeps the .json beside it, crash files go to <work>/crash
    wf.config["execution"] = {"remove_unnecessary_outputs": False, "crashdump_dir": str(work / "crash"),
                              "crashfile_format": "txt", "stop_on_first_crash": False}
    wf.run(plugin="Linear")
    counts = failed_voxels(config, item)
    if counts and describe_failed_voxels(counts) != "0":
        print(f"dmrimc_wf: warning: {item.label}: failed voxels (failed/fitted) {describe_failed_voxels(counts)}")
    base = Path(config.run.out_dir) / f"sub-{subject}"
    folder = base / (f"ses-{session}" if session else "") / "dwi"
    out_files = sorted(str(p) for p in folder.glob(f"{item.label}_*_dwimap.*"))
    return out_files, str(Path(config.run.out_dir) / f"sub-{subject}.html")
