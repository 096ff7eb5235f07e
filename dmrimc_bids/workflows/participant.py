"""Participant-level Nipype graph, built from literate sub-workflows (each with an inputnode and an
outputnode, fMRIPrep style):

    init_participant_wf
      select_dictionary (once for all subjects)
      init_single_subject_wf (one per subject/session)
        init_dwi_preproc_wf   read protocol -> mask -> spherical mean -> b0 normalisation
        init_tissue_wf        vascular-threshold filter -> [simulate] -> match dictionary -> FitModel
        (or init_joint_wf     filter -> match both dictionaries -> FitModel(joint), the default)
        init_vascular_wf      FitModel(ivim) -> [simulate flow] -> match flow dictionary -> FitModel
        init_derivatives_wf   (one per model) maps + JSON sidecars, written atomically
        session_report        the session's report fragment (maps, figures, the models' descriptions)
      subject_report (one per subject, joining its sessions)

Every model node is the one generic FitModel interface; its options come from Config.*_model_options,
its description (method sentence, sidecar parameters) from the model that ran.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nipype.pipeline import engine as pe

from nipype.interfaces.utility import IdentityInterface

from .. import __version__
from ..bids.layout import SessionInputs
from ..core import preprocess
from ..core.dictionary_default import load_selected
from ..core.errors import InputError
from ..core.protocol import Protocol
from ..interfaces.bids import WriteDerivatives
from ..interfaces.dictionary import MatchDictionary, SelectDictionary
from ..interfaces.fitting import FitModel
from ..bids.protocol import session_protocols
from ..bids.provenance import input_record
from ..bids.images import prepare_mask, verify_image
from ..interfaces.preprocess import NormaliseB0, PrepareMask, ReadProtocol, SphericalMean, VascularFilter
from ..interfaces.reports import SessionReport, SubjectReport
from ..interfaces.simulation import SimulateFlowForProtocol, SimulateForProtocol
from . import methods
from .config import Config


#: Upper bound of the fitting memory per voxel of a batch [bytes]: grid-search and LM work arrays, and the
#: posterior estimator's voxel x entry matrices for flow dictionaries of ~600 entries.
BYTES_PER_BATCH_VOXEL = 40e3


def chunk_for_memory(mem_gb_per_process: float, chunk_size: int) -> int:
    """Largest batch (<= chunk_size, >= 100) whose work arrays use at most half of the memory budget."""
    return int(max(100, min(chunk_size, 0.5 * mem_gb_per_process * 1e9 / BYTES_PER_BATCH_VOXEL)))


def dwi_size(item: SessionInputs) -> tuple[int, int]:
    """(voxels, volumes of all runs) of a session's DWI, from the headers."""
    import nibabel as nib
    shapes = [nib.load(f).shape for f in item.dwi_files]
    return int(np.prod(shapes[0][:3])), sum(s[3] if len(s) > 3 else 1 for s in shapes)


def fit_memory_gb(n_vox: int, config: Config, n_meas: int) -> float:
    """Honest mem_gb of a fit node: the float64 copies of the data and σ (4 arrays of voxels x
    measurements), the maps, and one batch's work arrays, plus the interpreter (~0.4 GB)."""
    data = 4 * n_vox * n_meas * 8 + 40 * n_vox * 4
    return round(0.4 + (data + min(config.execution.chunk_size, n_vox) * BYTES_PER_BATCH_VOXEL) / 1e9, 2)


#: Peak memory of a node that holds images, in float64 copies of the session's 4D DWI, and the interpreter
#: with numpy/nibabel/Nipype (~0.08 GB measured): benchmarks/node_memory.py measures each node alone.
IMAGE_NODE_COPIES = {"spherical_mean": 1.5, "normalise_b0": 1.5, "vascular_filter": 1.0, "session_report": 1.0,
                     "fit_ivim": 2.5}
INTERPRETER_GB = 0.15


def session_memory_gb(item: SessionInputs, config: Config, n_meas: int) -> dict:
    """Honest mem_gb of a session's nodes, {node: GB} (headers read once): the image nodes hold the
    interpreter plus IMAGE_NODE_COPIES[node] float64 copies of the DWI (all runs); "fit" is fit_memory_gb."""
    n_vox, n_vol = dwi_size(item)
    dwi_gb = n_vox * n_vol * 8 / 1e9
    mem = {node: round(INTERPRETER_GB + copies * dwi_gb, 2) for node, copies in IMAGE_NODE_COPIES.items()}
    mem["fit"] = fit_memory_gb(n_vox, config, n_meas)
    return mem


def session_protocol(item: SessionInputs, config: Config) -> tuple[Protocol, Protocol]:
    """(per-volume protocol, directionally averaged shells) of a session, from headers and metadata only."""
    protos = session_protocols(item.dwi_files, item.bval_files, item.bvec_files, item.sidecar_files, item.gdur_files,
                               item.gsep_files, item.confounds_files, config.inputs.small_delta_ms, config.inputs.big_delta_ms,
                               config.run_timing(), config.preprocessing.b0_threshold)
    proto = Protocol.concatenate(protos)
    shells, _ = preprocess.shell_assignment(proto, config.preprocessing.b0_threshold, config.preprocessing.shell_tolerance)
    return proto, shells


def has_vascular_branch(item: SessionInputs, config: Config, shells: Protocol | None = None) -> bool:
    """True when the vascular branch runs: not switched off and some TE group has IVIM b-values."""
    from ..core.fitting.ivim import ivim_groups
    if config.vascular.vascular == "off":
        return False
    shells = session_protocol(item, config)[1] if shells is None else shells
    usable, _ = ivim_groups(shells, config.vascular.ivim_b_split, config.vascular.ivim_b_max, config.preprocessing.b0_threshold)
    return bool(usable)


def session_config(item: SessionInputs, config: Config, shells: Protocol | None = None) -> Config:
    """The run's Config with the session's model (Config.session_model): the joint fit where the session
    has IVIM b-values, the separate branches otherwise."""
    model = config.session_model(has_vascular_branch(item, config, shells))
    return config if model == config.vascular.model else config.replace(model=model)


@dataclass
class SessionPlan:
    """What a session's graph looks like, decided from its headers and metadata (plan_session) or given (to
    build and draw a graph without data, example_plan): the session's Config (its model), whether the
    vascular branch runs, the nodes' memory {node: GB} and the sidecars' input record."""
    config: Config
    vascular: bool
    mem: dict
    records: dict


def plan_session(item: SessionInputs, config: Config) -> SessionPlan:
    """The SessionPlan of a session from its headers and metadata (no voxel data read)."""
    shells = session_protocol(item, config)[1]
    cfg = session_config(item, config, shells)
    return SessionPlan(cfg, has_vascular_branch(item, cfg, shells), session_memory_gb(item, cfg, len(shells)),
                       input_record(item, config.run.dataset_links))


def example_plan(config: Config, model: str = "joint", vascular: bool = True) -> tuple[SessionInputs, SessionPlan]:
    """(a subject with no files, a nominal SessionPlan): the graph of ``model`` with or without the vascular
    branch, built without data, to be drawn (workflow.write_graph) or inspected."""
    item = SessionInputs(subject="example", session=None, dwi_files=[], bval_files=[], bvec_files=[],
                         sidecar_files=[], gdur_files=[], gsep_files=[])
    mem = {node: INTERPRETER_GB for node in IMAGE_NODE_COPIES} | {"fit": 1.0}
    return item, SessionPlan(config.replace(model=model), vascular, mem, {})


def preflight(item: SessionInputs, config: Config, dictionary=None) -> dict:
    """Run every input check of the graph on headers and metadata only (fast), raising InputError.

    Returns a summary (volumes, shells, fitted and dropped measurements) for logging.
    """
    for f, what in [(f, "DWI") for f in item.dwi_files] + [(item.mask_file, "mask"), (item.sigma_file, "noise σ map")]:
        if f:
            verify_image(f, what)  # a corrupt or truncated file stops here, never in a fit
    proto, shells = session_protocol(item, config)
    config = session_config(item, config, shells)
    prepare_mask(item.dwi_files[0], item.mask_file or None, item.sigma_file or None)
    source = item.dwi_files[0]
    plan = preprocess.normalisation_plan(shells, config.preprocessing.b0_threshold, source, not config.preprocessing.b0_per_series)
    simulate = config.tissue.dictionary_source == "simulate"
    dic = dictionary if dictionary is not None else load_selected(config.tissue.dictionary, config.tissue.params, config.tissue.fix)
    max_b = float("inf") if simulate else dic.max_b
    threshold = 0.0 if config.vascular.model == "joint" else config.preprocessing.vasc_threshold   # joint: every b > 0
    filt = preprocess.vascular_filter(shells, threshold, max_b, config.preprocessing.b0_threshold)
    if filt.keep.size == 0:
        raise InputError("no measurement left for the tissue fit", path=source,
                         fix=f"acquire b between --vasc-threshold ({config.preprocessing.vasc_threshold:g}) and the dictionary's "
                             f"largest b ({dic.max_b:g} s/mm²)")
    if not simulate:  # a simulated dictionary matches by construction
        dic.match(shells.subset(filt.keep), config.tissue.match_tol_b, config.tissue.match_tol_ms,
                  config.preprocessing.b0_threshold, source)
    vascular = has_vascular_branch(item, config, shells)
    if config.vascular.vascular == "on" and not vascular:
        raise InputError("--vascular on: no TE group has the b-values segmented IVIM needs", path=source,
                         fix=f"acquire a b=0, a b in ({config.preprocessing.b0_threshold:g}, "
                             f"{config.vascular.ivim_b_split:g}] and two b in ({config.vascular.ivim_b_split:g}, "
                             f"{config.vascular.ivim_b_max:g}] s/mm² at one TE, or use --vascular off")
    return {"volumes": len(proto), "shells": len(shells), "fitted": int(filt.keep.size),
            "warnings": filt.warnings() + plan.notes, "vascular": vascular, "model": config.vascular.model,
            "mask": mask_sentence(item)}


def mask_sentence(item: SessionInputs) -> str:
    """Which mask the session is fitted in, for the terminal: the file and how it was found, or that none was
    given and one is built from the b=0 (the report's Inputs table gives its voxel count)."""
    if item.mask_file:
        return f"mask {item.mask_file} ({item.mask_origin})"
    return (f"no mask given: built from the mean b=0 intensity (voxels above {100 * preprocess.B0_MASK_FRACTION:g} % "
            "of its 98th percentile; --mask FILE or a desc-<label>_mask in --derivatives to give one)")


def init_participant_wf(items: list[SessionInputs], config: Config, work_dir, name="dmrimc_bids_wf",
                        warnings: dict | None = None, plans: dict | None = None):
    """Top workflow: the dictionary selection node, one sub-workflow per subject/session and one report
    node per subject joining its sessions' fragments. warnings: {item label: [preflight warnings]}; plans:
    {item label: SessionPlan} (default: plan_session from each session's headers)."""
    plans = {item.label: (plans or {}).get(item.label) or plan_session(item, config) for item in items}
    from nipype.interfaces.utility import Merge

    major, minor = __version__.split(".")[:2]
    wf = pe.Workflow(name=f"{name}_{major}_{minor}", base_dir=str(work_dir))
    select = pe.Node(SelectDictionary(params=list(config.tissue.params), fix=dict(config.tissue.fix)), name="select_dictionary",
                     mem_gb=1.0)
    if config.tissue.dictionary:
        select.inputs.dictionary_file = config.tissue.dictionary
    by_subject: dict = {}
    for item in items:
        sub = init_single_subject_wf(item, config, (warnings or {}).get(item.label, []), plans[item.label])
        by_subject.setdefault(item.subject, []).append(sub)
        if config.tissue.dictionary_source == "simulate":
            wf.add_nodes([sub])
        else:
            branch = "joint_wf" if plans[item.label].config.vascular.model == "joint" else "tissue_wf"
            wf.connect([(select, sub, [("max_b", f"{branch}.inputnode.max_b"),
                                       ("description", "histousim_derivatives_wf.inputnode.dictionary_description")])])
    for subject, subs in by_subject.items():
        join = pe.Node(Merge(len(subs)), name=f"report_fragments_{subject}", run_without_submitting=True)
        report = pe.Node(SubjectReport(out_dir=config.run.out_dir, subject=subject, options=config.report_options()),
                         name=f"subject_report_{subject}", mem_gb=0.5)
        for k, sub in enumerate(subs, start=1):
            wf.connect(sub, "session_report.fragment", join, f"in{k}")
        wf.connect(join, "out", report, "fragments")
    return wf


def init_example_wf(config: Config, work_dir, model: str = "joint", vascular: bool = True) -> pe.Workflow:
    """The participant workflow of one subject with no data (example_plan): the graph the app builds for
    ``model`` (joint or separate), with or without the vascular branch, to draw (write_graph) or inspect."""
    item, plan = example_plan(config, model, vascular)
    return init_participant_wf([item], plan.config, work_dir, plans={item.label: plan})


def subject_wf_name(item: SessionInputs) -> str:
    """Name of a subject/session's sub-workflow (its folder in the work dir; crash files carry it)."""
    return f"single_subject_{item.subject}" + (f"_ses_{item.session}" if item.session else "") + "_wf"


def init_single_subject_wf(item: SessionInputs, config: Config, warnings: list | None = None,
                           plan: SessionPlan | None = None) -> pe.Workflow:
    """One subject/session: preprocessing, the tissue branch, the vascular branch when the protocol has
    IVIM b-values, one derivatives writer per model, and the session's report fragment. plan: the
    SessionPlan (default: plan_session from the session's headers)."""
    plan = plan or plan_session(item, config)
    config, mem, records = plan.config, plan.mem, plan.records
    wf = pe.Workflow(name=subject_wf_name(item))
    wf.__postdesc__ = methods.seed_postdesc(config)
    prep = init_dwi_preproc_wf(item, config, mem)
    joint = config.vascular.model == "joint"
    tissue = init_joint_wf(item, config, mem) if joint else init_tissue_wf(item, config, mem)
    write = init_derivatives_wf(item, config, "histousim", records=records)
    report = pe.Node(SessionReport(out_dir=config.run.out_dir, subject=item.subject, session=item.session or "",
                                   b0_threshold=config.preprocessing.b0_threshold, warnings=list(warnings or []),
                                   input_files=records),
                     name="session_report", mem_gb=max(0.5, mem["session_report"]))
    branch_in = [(f"outputnode.{f}", f"inputnode.{f}") for f in ("norm_file", "sigma_file", "shells", "mask_file")]
    wf.connect([
        (prep, tissue, list(branch_in)),  # a copy each: Nipype rewrites a connection list in place
        (tissue, write, [(f"outputnode.{f}", f"inputnode.{f}") for f in
                         ("maps", "units", "description", "fit_info", "matched_dictionary", "dropped")]),
        (prep, write, [("outputnode.notes", "inputnode.notes")]),
        (prep, report, [("outputnode.protocol", "protocol"), ("outputnode.shells", "shells"),
                        ("outputnode.sph_file", "sph_file"), ("outputnode.mask_file", "mask_file"),
                        ("outputnode.norm_file", "norm_file"), ("outputnode.mask_origin", "mask_origin")]),
        (tissue, report, [("outputnode.examples_file", "tissue_examples"),
                          ("outputnode.description", "tissue_description")]),
        (write, report, [("outputnode.out_files", "written_tissue")]),
    ])
    if config.tissue.dictionary_source == "simulate":
        wf.connect(tissue, "outputnode.dictionary_description", write, "inputnode.dictionary_description")
    if joint:
        _add_joint_flow_writer(wf, item, config, tissue, report, records)
        if plan.vascular:
            _add_ivim_maps(wf, item, config, mem, prep, report, records)
    elif plan.vascular:
        _add_vascular_branch(wf, item, config, mem, prep, report, branch_in, records)
    report.inputs.pipeline_methods = methods.workflow_methods(wf)
    return wf


def ivim_node(config: Config, mem: dict) -> pe.Node:
    """The IVIM fit (FitModel 'ivim', --ivim-estimator): fV, D, D*, S0 and the vascular signal."""
    label = "Bayesian IVIM" if config.vascular.ivim_estimator == "bayes" else "segmented IVIM"
    return pe.Node(FitModel(estimator="ivim", **config.model_options("ivim"), label=label,
                            n_threads=config.execution.omp_nthreads),
                   name="fit_ivim", n_procs=config.execution.omp_nthreads, mem_gb=max(1.0, mem["fit_ivim"]))


def _add_ivim_maps(wf, item, config: Config, mem: dict, prep, report, records=None) -> None:
    """--model joint: the model-ivim maps beside the joint fit's (the IVIM fit of the low b, its writer)."""
    ivim = ivim_node(config, mem)
    write_ivim = init_derivatives_wf(item, config, "ivim", records=records)
    wf.connect([
        (prep, ivim, [(f"outputnode.{f}", k) for f, k in (("norm_file", "in_file"), ("sigma_file", "sigma_file"),
                                                           ("shells", "protocol"), ("mask_file", "mask_file"))]),
        (ivim, write_ivim, [("maps", "inputnode.maps"), ("units", "inputnode.units"),
                            ("description", "inputnode.description"), ("notes", "inputnode.notes")]),
        (ivim, report, [("description", "ivim_description")]),
        (write_ivim, report, [("outputnode.out_files", "written_ivim")]),
    ])


def _add_vascular_branch(wf, item, config: Config, mem: dict, prep, report, branch_in, records=None) -> None:
    """init_vascular_wf and its two derivatives writers (ivim, spinflowsim), wired into a session."""
    vascular = init_vascular_wf(item, config, mem)
    write_ivim = init_derivatives_wf(item, config, "ivim", records=records)
    write_flow = init_derivatives_wf(item, config, "spinflowsim", records=records)
    wf.connect([
        (prep, vascular, list(branch_in)),
        (vascular, write_ivim, [("outputnode.ivim_maps", "inputnode.maps"), ("outputnode.ivim_units", "inputnode.units"),
                                ("outputnode.ivim_description", "inputnode.description"),
                                ("outputnode.notes", "inputnode.notes")]),
        (vascular, write_flow, [("outputnode.flow_maps", "inputnode.maps"), ("outputnode.flow_units", "inputnode.units"),
                                ("outputnode.flow_description", "inputnode.description"),
                                ("outputnode.matched_dictionary", "inputnode.matched_dictionary"),
                                ("outputnode.dictionary_description", "inputnode.dictionary_description"),
                                ("outputnode.notes", "inputnode.notes")]),
        (vascular, report, [("outputnode.flow_examples", "flow_examples"), ("outputnode.skipped", "skipped"),
                            ("outputnode.ivim_description", "ivim_description"),
                            ("outputnode.flow_description", "flow_description")]),
        (write_ivim, report, [("outputnode.out_files", "written_ivim")]),
        (write_flow, report, [("outputnode.out_files", "written_flow")]),
    ])


def _source(item: SessionInputs) -> str:
    """The file named in a node's error messages: the session's first DWI."""
    return item.dwi_files[0] if item.dwi_files else ""


def init_dwi_preproc_wf(item: SessionInputs, config: Config, mem: dict, name="dwi_preproc_wf") -> pe.Workflow:
    """Preprocessing of one session's DWI series.

    read_protocol (runs concatenated, per-volume b/δ/Δ/TE) -> prepare_mask (grid checked) ->
    spherical_mean (per (b, δ, Δ, TE) shell) -> normalise_b0 (pooled b=0 per TE, σ map too).
    outputnode: protocol, shells, sph_file, mask_file, norm_file, sigma_file (absent without a σ map),
    notes (normalisation notes), mask_origin (the given mask, or how it was built from the b=0).
    """
    wf = pe.Workflow(name=name)
    wf.__desc__ = methods.preproc_desc(config)
    outputnode = pe.Node(IdentityInterface(fields=["protocol", "shells", "sph_file", "mask_file", "norm_file",
                                                   "sigma_file", "notes", "mask_origin"]), name="outputnode")
    read = pe.Node(ReadProtocol(b0_threshold=config.preprocessing.b0_threshold), name="read_protocol")
    if item.dwi_files:   # (example_plan: a graph without data has no files to read)
        read.inputs.dwi_files, read.inputs.bval_files = item.dwi_files, item.bval_files
        for trait, files in (("bvec_files", item.bvec_files), ("sidecar_files", item.sidecar_files),
                             ("gdur_files", item.gdur_files), ("gsep_files", item.gsep_files),
                             ("confounds_files", item.confounds_files)):
            setattr(read.inputs, trait, list(files) if files else [""] * len(item.dwi_files))
    for trait in ("small_delta_ms", "big_delta_ms"):
        if config.get(trait) is not None:
            setattr(read.inputs, trait, config.get(trait))
    if config.inputs.timing:
        read.inputs.timing = {k: list(v) for k, v in config.run_timing().items()}
    mask = pe.Node(PrepareMask(b0_threshold=config.preprocessing.b0_threshold), name="prepare_mask", mem_gb=mem["spherical_mean"])
    norm = pe.Node(NormaliseB0(b0_threshold=config.preprocessing.b0_threshold, pool_series=not config.preprocessing.b0_per_series,
                               source=_source(item)), name="normalise_b0", mem_gb=mem["normalise_b0"])
    for node in (mask, norm):
        if item.sigma_file:
            node.inputs.sigma_file = item.sigma_file
    if item.mask_file:
        mask.inputs.mask_file = item.mask_file
    sph = pe.Node(SphericalMean(b0_threshold=config.preprocessing.b0_threshold, shell_tolerance=config.preprocessing.shell_tolerance),
                  name="spherical_mean", mem_gb=mem["spherical_mean"])
    wf.connect([
        (read, mask, [("dwi_file", "dwi_file"), ("protocol", "protocol")]),
        (read, sph, [("dwi_file", "dwi_file"), ("protocol", "protocol")]),
        (sph, norm, [("out_file", "in_file"), ("shells", "shells")]),
        (read, outputnode, [("protocol", "protocol")]),
        (sph, outputnode, [("shells", "shells"), ("out_file", "sph_file")]),
        (mask, outputnode, [("mask_file", "mask_file"), ("mask_origin", "mask_origin")]),
        (norm, outputnode, [("out_file", "norm_file"), ("sigma_file", "sigma_file"), ("notes", "notes")]),
    ])
    return wf


def init_tissue_wf(item: SessionInputs, config: Config, mem: dict, name="tissue_wf") -> pe.Workflow:
    """Tissue microstructure (Histo-μSim).

    vascular_filter (drop b below --vasc-threshold and above the dictionary's largest b) ->
    [simulate_dictionary for exactly these measurements, --dictionary-source simulate] ->
    match_dictionary (the dictionary's columns for the measured (b, δ, Δ)) -> fit_histousim (FitModel,
    estimator --estimator). inputnode: norm_file, sigma_file, shells, mask_file, max_b. outputnode: maps,
    units, description, fit_info, examples_file, matched_dictionary, dropped, dictionary_description
    (simulated dictionaries; a matched one is described by the top workflow's select_dictionary).
    """
    wf = pe.Workflow(name=name)
    if config.vascular.model == "separate":
        wf.__desc__ = methods.separate_desc()
    inputnode = pe.Node(IdentityInterface(fields=["norm_file", "sigma_file", "shells", "mask_file", "max_b"]),
                        name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=["maps", "units", "description", "fit_info", "examples_file",
                                                   "matched_dictionary", "dropped", "dictionary_description"]),
                         name="outputnode")
    filt = pe.Node(VascularFilter(vasc_threshold=config.preprocessing.vasc_threshold, b0_threshold=config.preprocessing.b0_threshold),
                   name="vascular_filter", mem_gb=mem["vascular_filter"])
    match = pe.Node(MatchDictionary(params=list(config.tissue.params), fix=dict(config.tissue.fix), tol_b=config.tissue.match_tol_b,
                                    tol_ms=config.tissue.match_tol_ms, b0_threshold=config.preprocessing.b0_threshold,
                                    source=_source(item)), name="match_dictionary", mem_gb=1.0)
    fit = pe.Node(FitModel(estimator=config.tissue.estimator, **config.model_options("tissue"),
                           n_threads=config.execution.omp_nthreads, label="Histo-uSim fit"),
                  name="fit_histousim", n_procs=config.execution.omp_nthreads, mem_gb=mem["fit"])
    wf.connect([
        (inputnode, filt, [("norm_file", "in_file"), ("sigma_file", "sigma_file"), ("shells", "shells")]),
        (filt, match, [("protocol", "protocol")]),
        (filt, fit, [("out_file", "in_file"), ("sigma_file", "sigma_file")]),
        (inputnode, fit, [("mask_file", "mask_file")]),
        (match, fit, [("dictionary", "dictionary")]),
        (fit, outputnode, [("maps", "maps"), ("units", "units"), ("description", "description"),
                           ("info", "fit_info"), ("examples_file", "examples_file")]),
        (match, outputnode, [("dictionary", "matched_dictionary")]),
        (filt, outputnode, [("dropped", "dropped")]),
    ])
    if config.tissue.dictionary_source != "simulate":
        if config.tissue.dictionary:
            match.inputs.dictionary_file = config.tissue.dictionary
        wf.connect(inputnode, "max_b", filt, "max_b")
        return wf
    sim = pe.Node(SimulateForProtocol(substrates=list(config.tissue.sim_substrates), d0in=list(config.tissue.sim_d0),
                                      d0ex=list(config.tissue.sim_d0), kappa=list(config.tissue.sim_kappa),
                                      n_walkers=config.tissue.sim_walkers, seed=config.execution.seed, device=config.execution.device,
                                      n_threads=config.execution.omp_nthreads, cache_dir=config.execution.sim_cache_dir,
                                      b0_threshold=config.preprocessing.b0_threshold),
                  name="simulate_dictionary", n_procs=config.execution.omp_nthreads, mem_gb=2.0)
    filt.inputs.max_b = 1e12  # the dictionary is simulated for every measured b
    wf.connect([(filt, sim, [("protocol", "protocol")]), (sim, match, [("dictionary", "dictionary_file")]),
                (sim, outputnode, [("description", "dictionary_description")])])
    return wf


def init_joint_wf(item: SessionInputs, config: Config, mem: dict, name="joint_wf") -> pe.Workflow:
    """Tissue and vasculature in one posterior (--model joint, core/fitting/joint.py).

    measurements (every b > 0 up to the tissue dictionary's largest b) -> match_dictionary (tissue) and
    [simulate_flow_dictionary for these measurements, unless --flow-dictionary] -> match_flow_dictionary ->
    fit_joint. inputnode: norm_file, sigma_file, shells, mask_file, max_b. outputnode: the tissue fields of
    init_tissue_wf and flow_maps, flow_units, flow_description, flow_info, flow_matched_dictionary,
    flow_dictionary_description.
    """
    wf = pe.Workflow(name=name)
    wf.__desc__ = methods.joint_desc()
    inputnode = pe.Node(IdentityInterface(fields=["norm_file", "sigma_file", "shells", "mask_file", "max_b"]),
                        name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=[
        "maps", "units", "description", "fit_info", "examples_file", "matched_dictionary", "dropped",
        "dictionary_description", "flow_maps", "flow_units", "flow_description", "flow_info",
        "flow_matched_dictionary", "flow_dictionary_description"]), name="outputnode")
    filt = pe.Node(VascularFilter(vasc_threshold=0.0, b0_threshold=config.preprocessing.b0_threshold), name="measurements",
                   mem_gb=mem["vascular_filter"])
    match = pe.Node(MatchDictionary(params=list(config.tissue.params), fix=dict(config.tissue.fix), tol_b=config.tissue.match_tol_b,
                                    tol_ms=config.tissue.match_tol_ms, b0_threshold=config.preprocessing.b0_threshold,
                                    source=_source(item)), name="match_dictionary", mem_gb=1.0)
    if config.tissue.dictionary:
        match.inputs.dictionary_file = config.tissue.dictionary
    match_flow = pe.Node(MatchDictionary(params=list(config.vascular.flow_params), tol_b=config.vascular.flow_match_tol_b,
                                         tol_ms=config.tissue.match_tol_ms, b0_threshold=config.preprocessing.b0_threshold,
                                         source=_source(item)), name="match_flow_dictionary", mem_gb=1.0)
    fit = pe.Node(FitModel(estimator="joint", **config.model_options("joint"), label="joint fit",
                           n_threads=config.execution.omp_nthreads),
                  name="fit_joint", n_procs=config.execution.omp_nthreads, mem_gb=mem["fit"])
    wf.connect([
        (inputnode, filt, [("norm_file", "in_file"), ("sigma_file", "sigma_file"), ("shells", "shells"),
                           ("max_b", "max_b")]),
        (filt, match, [("protocol", "protocol")]), (filt, match_flow, [("protocol", "protocol")]),
        (filt, fit, [("out_file", "in_file"), ("sigma_file", "sigma_file")]),
        (inputnode, fit, [("mask_file", "mask_file")]),
        (match, fit, [("dictionary", "dictionary")]), (match_flow, fit, [("dictionary", "flow_dictionary")]),
        (fit, outputnode, [("maps", "maps"), ("units", "units"), ("description", "description"), ("info", "fit_info"),
                           ("examples_file", "examples_file"), ("flow_maps", "flow_maps"),
                           ("flow_units", "flow_units"), ("flow_description", "flow_description"),
                           ("flow_info", "flow_info")]),
        (match, outputnode, [("dictionary", "matched_dictionary")]),
        (match_flow, outputnode, [("dictionary", "flow_matched_dictionary")]),
        (filt, outputnode, [("dropped", "dropped")]),
    ])
    _add_flow_dictionary(wf, config, (filt, "protocol"), match_flow, outputnode, "flow_dictionary_description")
    return wf


def _add_joint_flow_writer(wf, item, config: Config, joint, report, records=None) -> None:
    """The spinflowsim derivatives of --model joint (vm, vs, anb and fV), wired into a session."""
    write_flow = init_derivatives_wf(item, config, "spinflowsim", records=records)
    wf.connect([
        (joint, write_flow, [("outputnode.flow_maps", "inputnode.maps"), ("outputnode.flow_units", "inputnode.units"),
                             ("outputnode.flow_description", "inputnode.description"),
                             ("outputnode.flow_info", "inputnode.fit_info"),
                             ("outputnode.flow_matched_dictionary", "inputnode.matched_dictionary"),
                             ("outputnode.flow_dictionary_description", "inputnode.dictionary_description")]),
        (joint, report, [("outputnode.flow_description", "flow_description")]),
        (write_flow, report, [("outputnode.out_files", "written_flow")]),
    ])


def init_vascular_wf(item: SessionInputs, config: Config, mem: dict, name="vascular_wf") -> pe.Workflow:
    """Microvasculature (IVIM, then SpinFlowSim).

    fit_ivim (FitModel 'ivim', --ivim-estimator: fV, D, D*, S0 and the vascular signal S_V/S_V(0) of the low-b
    measurements, with the voxels where fV >= 0.005) -> [simulate_flow_dictionary for exactly those
    measurements, unless --flow-dictionary] -> match_flow_dictionary -> fit_spinflowsim (FitModel,
    --flow-estimator). When no voxel has a vascular signal the flow fit writes no maps and ``skipped``
    says why. inputnode: norm_file, sigma_file, shells, mask_file. outputnode: ivim_maps, ivim_units,
    ivim_description, notes, skipped, flow_maps, flow_units, flow_description, flow_examples,
    matched_dictionary, dictionary_description.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(fields=["norm_file", "sigma_file", "shells", "mask_file"]), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=[
        "ivim_maps", "ivim_units", "ivim_description", "notes", "skipped", "flow_maps", "flow_units",
        "flow_description", "flow_examples", "matched_dictionary", "dictionary_description"]), name="outputnode")
    ivim = ivim_node(config, mem)
    match = pe.Node(MatchDictionary(params=list(config.vascular.flow_params), tol_b=config.vascular.flow_match_tol_b,
                                    tol_ms=config.tissue.match_tol_ms, b0_threshold=config.preprocessing.b0_threshold,
                                    source=_source(item)), name="match_flow_dictionary", mem_gb=1.0)
    fit = pe.Node(FitModel(estimator=config.vascular.flow_estimator, **config.model_options("flow"),
                           n_threads=config.execution.omp_nthreads, label="SpinFlowSim fit"),
                  name="fit_spinflowsim", n_procs=config.execution.omp_nthreads, mem_gb=mem["fit"])
    wf.connect([
        (inputnode, ivim, [("norm_file", "in_file"), ("sigma_file", "sigma_file"), ("shells", "protocol"),
                           ("mask_file", "mask_file")]),
        (ivim, match, [("signal_protocol", "protocol")]),
        (ivim, fit, [("signal_file", "in_file"), ("signal_sigma_file", "sigma_file"), ("signal_mask", "mask_file")]),
        (inputnode, fit, [("mask_file", "session_mask_file")]),
        (match, fit, [("dictionary", "dictionary")]),
        (ivim, outputnode, [("maps", "ivim_maps"), ("units", "ivim_units"), ("description", "ivim_description"),
                            ("notes", "notes"), (("signal_reason", _as_list), "skipped")]),
        (fit, outputnode, [("maps", "flow_maps"), ("units", "flow_units"), ("description", "flow_description"),
                           ("examples_file", "flow_examples")]),
        (match, outputnode, [("dictionary", "matched_dictionary")]),
    ])
    _add_flow_dictionary(wf, config, (ivim, "signal_protocol"), match, outputnode, "dictionary_description")
    return wf


def _add_flow_dictionary(wf, config: Config, protocol_from: tuple, match, outputnode, description_field: str) -> None:
    """The flow dictionary of a branch: --flow-dictionary as given, or simulated for the measurements of
    protocol_from (node, output) from the networks (cached); its description goes to description_field."""
    if config.vascular.flow_dictionary:
        match.inputs.dictionary_file = config.vascular.flow_dictionary
        setattr(outputnode.inputs, description_field,
                load_selected(config.vascular.flow_dictionary, config.vascular.flow_params).describe())
        return
    sim = pe.Node(SimulateFlowForProtocol(network_files=list(config.vascular.flow_networks), n_spins=config.vascular.flow_spins,
                                          seed=config.execution.seed, cache_dir=config.execution.sim_cache_dir,
                                          b0_threshold=config.preprocessing.b0_threshold, n_threads=config.execution.omp_nthreads),
                  name="simulate_flow_dictionary", mem_gb=1.0, n_procs=config.execution.omp_nthreads)
    node, field = protocol_from
    wf.connect([(node, sim, [(field, "protocol")]), (sim, match, [("dictionary", "dictionary_file")]),
                (sim, outputnode, [("description", description_field)])])


def _as_list(reason: str) -> list:
    """A node output's reason ('' for none) as the report's list of lines."""
    return [f"SpinFlowSim: {reason}"] if reason else []


def init_derivatives_wf(item: SessionInputs, config: Config, model: str, name=None, records=None) -> pe.Workflow:
    """BIDS derivatives of one model (``model``: histousim, ivim, spinflowsim): every map with its JSON
    sidecar, staged and then renamed into place (bids.derivatives). The sidecar's Model.Parameters are
    the model's own (``description``) followed by the pipeline's (Config.sidecar_parameters). inputnode:
    maps, units, description, fit_info, matched_dictionary, dictionary_description, dropped, notes.
    outputnode: out_files (none when ``maps`` is empty). records: the session's bids.provenance.input_record
    (computed here when not given): every sidecar's InputFiles and Sources."""
    fields = ["maps", "units", "description", "fit_info", "matched_dictionary", "dictionary_description",
              "dropped", "notes"]
    wf = pe.Workflow(name=name or f"{model}_derivatives_wf")
    inputnode = pe.Node(IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=["out_files"]), name="outputnode")
    write = pe.Node(WriteDerivatives(out_dir=config.run.out_dir, subject=item.subject, session=item.session or "",
                                     model=model, parameters=config.sidecar_parameters(model), space=item.space,
                                     input_files=records or input_record(item, config.run.dataset_links)),
                    name="write_maps", run_without_submitting=True)
    wf.connect([(inputnode, write, [(f, f) for f in fields]), (write, outputnode, [("out_files", "out_files")])])
    return wf
