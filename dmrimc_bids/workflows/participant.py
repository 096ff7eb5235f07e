"""Participant-level Nipype graph: one sub-workflow per subject/session.

read protocol -> mask -> spherical mean -> b0 normalisation -> vascular-threshold filter ->
dictionary matching -> dictionary fit -> BIDS derivatives. The dictionary is selected once for all
subjects. When low-b volumes exist, the vascular branch (segmented IVIM -> flow dictionary fit of
S_V/S_V(0): init_vascular_wf) hangs off ``normalise``'s outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nipype.pipeline import engine as pe

from .. import __version__
from ..bids.layout import SessionInputs
from ..core import preprocess
from ..core.errors import InputError
from ..core.protocol import Protocol
from ..interfaces.bids import WriteDerivatives
from ..interfaces.dictionary import MatchDictionary, SelectDictionary, load_selected
from ..interfaces.fitting import FitDictionary
from ..interfaces.simulation import SimulateForProtocol
from ..interfaces.preprocess import (NormaliseB0, PrepareMask, ReadProtocol, SphericalMean, VascularFilter,
                                     prepare_mask, series_protocol)


@dataclass
class Options:
    """Everything that changes the participant results (recorded in the sidecars)."""

    out_dir: str
    dictionary: str = ""
    params: list = field(default_factory=list)
    fix: dict = field(default_factory=dict)
    b0_threshold: float = 20.0
    b0_pool_series: bool = True
    vasc_threshold: float = 250.0
    shell_tolerance: float = preprocess.DEFAULT_SHELL_TOLERANCE
    small_delta_ms: float | None = None
    big_delta_ms: float | None = None
    match_tol_b: float = 100.0
    match_tol_ms: float = 2.5
    n_averages: float = 1.0
    reg_norm: int = 2
    reg_weight: float = 0.0
    bounds: dict = field(default_factory=dict)
    smoothing: float = 1e-3
    surrogate: str = "local"
    n_neighbours: int = 32
    noise_model: str = "gaussian"
    estimator: str = "posterior-median"
    device: str = "auto"
    omp_nthreads: int = 1
    chunk_size: int = 10000
    seed: int = 0
    dictionary_source: str = "match"
    sim_substrates: list = field(default_factory=list)
    sim_walkers: int = 2000
    sim_d0: list = field(default_factory=list)
    sim_kappa: list = field(default_factory=list)
    sim_cache_dir: str = ""
    vascular: str = "auto"
    ivim_b_split: float = 200.0
    ivim_b_max: float = 1000.0
    flow_dictionary: str = ""
    flow_networks: list = field(default_factory=list)
    flow_spins: int = 2000
    flow_params: list = field(default_factory=list)
    flow_match_tol_b: float = 5.0
    flow_estimator: str = "posterior"

    def fit_parameters(self, estimator: str | None = None) -> dict:
        """Model.Parameters common to every map (of the tissue estimator, or of ``estimator``)."""
        estimator = estimator or self.estimator
        if estimator.startswith("posterior"):
            point = ("posterior median (interpolated between neighbouring values)" if estimator == "posterior-median"
                     else "posterior mean (geometric mean for positive parameters)")
            return {"FitMethod": f"{point} over the dictionary's entries (Gaussian likelihood with the voxel's "
                                 "sigma, flat prior over the entries inside the bounds)",
                    "NoiseModel": "Gaussian", "Uncertainty": "desc-sd maps: posterior SD",
                    "Bounds": self.bounds or "dictionary range", **self._common_parameters()}
        return {"FitMethod": "dictionary grid search + projected Levenberg-Marquardt on a thin-plate-spline "
                             f"surrogate ({self.surrogate}, {self.n_neighbours} nearest entries per local model)"
                             if self.surrogate == "local" else "dictionary grid search + projected "
                             "Levenberg-Marquardt on a thin-plate-spline surrogate (global)",
                "NoiseModel": {"gaussian": "offset-Gaussian", "rician": "Rician"}[self.noise_model],
                "Uncertainty": "desc-sd maps: sqrt(diag(inverse Fisher information)) at the estimate",
                "NoiseFloor": "sigma*sqrt(NAverages)*sqrt(pi/2) (no noise map: least squares)",
                "NAverages": self.n_averages, "Regularisation": {"Norm": self.reg_norm, "Weight": self.reg_weight},
                "Bounds": self.bounds or "dictionary range", "SurrogateSmoothing": self.smoothing,
                **self._common_parameters()}

    def _common_parameters(self) -> dict:
        return {"B0Threshold": self.b0_threshold, "VascularThreshold": self.vasc_threshold,
                "B0Normalisation": "b=0 of every series at the same TE, pooled after matching each series' "
                                   "global scale" if self.b0_pool_series else "b=0 of the measurement's own series",
                "ShellTolerance": self.shell_tolerance, "Fixed": self.fix, "Seed": self.seed,
                "SoftwareVersion": __version__}

    def report_options(self) -> dict:
        """Options quoted in the reports' methods text."""
        return {"b0_threshold": self.b0_threshold, "vasc_threshold": self.vasc_threshold,
                "noise_model": self.noise_model, "estimator": self.estimator,
                "b0_pool_series": self.b0_pool_series, "ivim_b_split": self.ivim_b_split, "ivim_b_max": self.ivim_b_max,
                "flow_estimator": self.flow_estimator, "seed": self.seed}

    def ivim_parameters(self) -> dict:
        return {"FitMethod": "segmented IVIM: D and intercept by least squares on b_split < b <= b_max; "
                             "tissue signal extrapolated; S_V = S - S_T fitted by F exp(-b D*) on b <= b_split; "
                             "fV = F/(F + intercept)",
                "BSplit": self.ivim_b_split, "BMax": self.ivim_b_max, "B0Threshold": self.b0_threshold,
                "Seed": self.seed, "SoftwareVersion": __version__}

    def flow_parameters(self) -> dict:
        out = self.fit_parameters("fit")
        out.pop("VascularThreshold", None)
        if self.flow_estimator == "posterior":
            out["FitMethod"] = ("posterior mean over the flow dictionary's entries (Gaussian likelihood, flat prior "
                                "over entries; geometric mean for positive parameters)")
            out["NoiseModel"] = "Gaussian (S_V is a difference of magnitudes)"
            out["Uncertainty"] = "desc-sd maps: posterior SD"
            for k in ("SurrogateSmoothing", "Regularisation", "Bounds"):
                out.pop(k, None)
        out["Signal"] = "vascular signal S_V/S_V(0) of the b <= b_split measurements (segmented IVIM)"
        out["FlowDictionary"] = self.flow_dictionary or ("simulated for this protocol from " + (
            "the given networks" if self.flow_networks else "the project's generated capillary networks"))
        return out


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


def fit_memory_gb(n_vox: int, opts: Options, n_meas: int) -> float:
    """Honest mem_gb of a fit node: the float64 copies of the data and σ (4 arrays of voxels x
    measurements), the maps, and one batch's work arrays, plus the interpreter (~0.4 GB)."""
    data = 4 * n_vox * n_meas * 8 + 40 * n_vox * 4
    return round(0.4 + (data + min(opts.chunk_size, n_vox) * BYTES_PER_BATCH_VOXEL) / 1e9, 2)


#: Peak memory of a node that holds images, in float64 copies of the session's 4D DWI, and the interpreter
#: with numpy/nibabel/Nipype (~0.08 GB measured): benchmarks/node_memory.py measures each node alone.
IMAGE_NODE_COPIES = {"spherical_mean": 1.5, "normalise_b0": 1.5, "vascular_filter": 1.0, "session_report": 1.0,
                     "fit_ivim": 2.5}
INTERPRETER_GB = 0.15


def session_memory_gb(item: SessionInputs, opts: Options, n_meas: int) -> dict:
    """Honest mem_gb of a session's nodes, {node: GB} (headers read once): the image nodes hold the
    interpreter plus IMAGE_NODE_COPIES[node] float64 copies of the DWI (all runs); "fit" is fit_memory_gb."""
    n_vox, n_vol = dwi_size(item)
    dwi_gb = n_vox * n_vol * 8 / 1e9
    mem = {node: round(INTERPRETER_GB + copies * dwi_gb, 2) for node, copies in IMAGE_NODE_COPIES.items()}
    mem["fit"] = fit_memory_gb(n_vox, opts, n_meas)
    return mem


def session_protocol(item: SessionInputs, opts: Options) -> tuple[Protocol, Protocol]:
    """(per-volume protocol, directionally averaged shells) of a session, from headers and metadata only."""
    protos = [series_protocol(d, b, bv or None, sc or None, gd or None, gs or None, opts.small_delta_ms,
                              opts.big_delta_ms, opts.b0_threshold)
              for d, b, bv, sc, gd, gs in zip(item.dwi_files, item.bval_files, item.bvec_files,
                                              item.sidecar_files, item.gdur_files, item.gsep_files)]
    proto = Protocol.concatenate(protos)
    shells, _ = preprocess.shell_assignment(proto, opts.b0_threshold, opts.shell_tolerance)
    return proto, shells


def has_vascular_branch(item: SessionInputs, opts: Options, shells: Protocol | None = None) -> bool:
    """True when the vascular branch runs: not switched off and some TE group has IVIM b-values."""
    from ..core.fitting.ivim import ivim_groups
    if opts.vascular == "off":
        return False
    shells = session_protocol(item, opts)[1] if shells is None else shells
    usable, _ = ivim_groups(shells, opts.ivim_b_split, opts.ivim_b_max, opts.b0_threshold)
    return bool(usable)


def preflight(item: SessionInputs, opts: Options, dictionary=None) -> dict:
    """Run every input check of the graph on headers and metadata only (fast), raising InputError.

    Returns a summary (volumes, shells, fitted and dropped measurements) for logging.
    """
    proto, shells = session_protocol(item, opts)
    prepare_mask(item.dwi_files[0], item.mask_file or None, item.sigma_file or None)
    source = item.dwi_files[0]
    plan = preprocess.normalisation_plan(shells, opts.b0_threshold, source, opts.b0_pool_series)
    simulate = opts.dictionary_source == "simulate"
    dic = dictionary if dictionary is not None else load_selected(opts.dictionary, opts.params, opts.fix)
    max_b = float("inf") if simulate else dic.max_b
    filt = preprocess.vascular_filter(shells, opts.vasc_threshold, max_b, opts.b0_threshold)
    if filt.keep.size == 0:
        raise InputError("no measurement left for the tissue fit", path=source,
                         fix=f"acquire b between --vasc-threshold ({opts.vasc_threshold:g}) and the dictionary's "
                             f"largest b ({dic.max_b:g} s/mm²)")
    if not simulate:  # a simulated dictionary matches by construction
        dic.match(shells.subset(filt.keep), opts.match_tol_b, opts.match_tol_ms, opts.b0_threshold, source)
    vascular = has_vascular_branch(item, opts, shells)
    if opts.vascular == "on" and not vascular:
        raise InputError("--vascular on: no TE group has the b-values segmented IVIM needs", path=source,
                         fix=f"acquire a b=0, a b in ({opts.b0_threshold:g}, {opts.ivim_b_split:g}] and two b in "
                             f"({opts.ivim_b_split:g}, {opts.ivim_b_max:g}] s/mm² at one TE, or use --vascular off")
    return {"volumes": len(proto), "shells": len(shells), "fitted": int(filt.keep.size),
            "warnings": filt.warnings() + plan.notes, "vascular": vascular}


def init_participant_wf(items: list[SessionInputs], opts: Options, work_dir, name="dmrimc_bids_wf",
                        warnings: dict | None = None):
    """Top workflow: the dictionary selection node, one sub-workflow per subject/session and one report
    node per subject joining its sessions' fragments. warnings: {item label: [preflight warnings]}."""
    from nipype.interfaces.utility import Merge

    from ..interfaces.reports import SubjectReport

    major, minor = __version__.split(".")[:2]
    wf = pe.Workflow(name=f"{name}_{major}_{minor}", base_dir=str(work_dir))
    select = pe.Node(SelectDictionary(dictionary_file=opts.dictionary, params=list(opts.params), fix=dict(opts.fix)),
                     name="select_dictionary", mem_gb=1.0)
    by_subject: dict = {}
    for item in items:
        sub = init_single_subject_wf(item, opts, (warnings or {}).get(item.label, []))
        by_subject.setdefault(item.subject, []).append(sub)
        if opts.dictionary_source == "simulate":
            wf.add_nodes([sub])
        else:
            wf.connect([(select, sub, [("max_b", "vascular_filter.max_b"),
                                       ("description", "write_maps.dictionary_description")])])
    for subject, subs in by_subject.items():
        join = pe.Node(Merge(len(subs)), name=f"report_fragments_{subject}", run_without_submitting=True)
        report = pe.Node(SubjectReport(out_dir=str(Path(opts.out_dir).resolve()), subject=subject,
                                       options=opts.report_options()),
                         name=f"subject_report_{subject}", mem_gb=0.5)
        for k, sub in enumerate(subs, start=1):
            wf.connect(sub, "session_report.fragment", join, f"in{k}")
        wf.connect(join, "out", report, "fragments")
    return wf


def init_vascular_wf(item: SessionInputs, opts: Options, wf, read, mask, sph, norm, report=None, *, mem: dict):
    """Vascular branch: segmented IVIM -> flow dictionary (simulated for the vascular measurements, or
    the user's, matched) -> dictionary fit of S_V/S_V(0) -> model-ivim and model-spinflowsim maps."""
    from ..interfaces.fitting import FitIVIM
    from ..interfaces.simulation import SimulateFlowForProtocol

    out_dir = str(Path(opts.out_dir).resolve())
    sources = [f"bids::{Path(f).name}" for f in item.dwi_files]
    ivim = pe.Node(FitIVIM(b_split=opts.ivim_b_split, b_max=opts.ivim_b_max, b0_threshold=opts.b0_threshold),
                   name="fit_ivim", mem_gb=max(1.0, mem["fit_ivim"]))
    write_ivim = pe.Node(WriteDerivatives(out_dir=out_dir, subject=item.subject, session=item.session or "",
                                          model="ivim", parameters=opts.ivim_parameters(), sources=sources,
                                          dropped=[]),
                         name="write_ivim", run_without_submitting=True)
    match = pe.Node(MatchDictionary(params=list(opts.flow_params), tol_b=opts.flow_match_tol_b,
                                    tol_ms=opts.match_tol_ms, b0_threshold=opts.b0_threshold,
                                    source=item.dwi_files[0]), name="match_flow_dictionary", mem_gb=1.0)
    fit = pe.Node(FitDictionary(n_averages=opts.n_averages, smoothing=opts.smoothing, surrogate="global",
                                noise_model=opts.noise_model, device=opts.device, n_threads=opts.omp_nthreads,
                                chunk_size=opts.chunk_size, estimator=opts.flow_estimator),
                  name="fit_spinflowsim", n_procs=opts.omp_nthreads,
                  mem_gb=mem["fit"])
    write_flow = pe.Node(WriteDerivatives(out_dir=out_dir, subject=item.subject, session=item.session or "",
                                          model="spinflowsim", parameters=opts.flow_parameters(), sources=sources,
                                          dropped=[]),
                         name="write_spinflowsim", run_without_submitting=True)
    wf.connect([
        (norm, ivim, [("out_file", "in_file"), ("sigma_file", "sigma_file")]),
        (sph, ivim, [("shells", "shells")]),
        (mask, ivim, [("mask_file", "mask_file")]),
        (ivim, write_ivim, [("maps", "maps"), ("units", "units"), ("notes", "notes")]),
        (ivim, match, [("vascular_protocol", "protocol")]),
        (ivim, fit, [("vascular_file", "in_file"), ("vascular_sigma_file", "sigma_file"),
                     ("vascular_mask", "mask_file")]),
        (match, fit, [("dictionary", "dictionary")]),
        (fit, write_flow, [("maps", "maps"), ("units", "units")]),
        (match, write_flow, [("dictionary", "matched_dictionary")]),
        (ivim, write_flow, [("notes", "notes")]),
    ])
    if report is not None:
        wf.connect([(fit, report, [("examples_file", "flow_examples")]),
                    (write_ivim, report, [("out_files", "written_ivim")]),
                    (write_flow, report, [("out_files", "written_flow")])])
    if opts.flow_dictionary:
        match.inputs.dictionary_file = opts.flow_dictionary
        write_flow.inputs.dictionary_description = load_selected(opts.flow_dictionary, opts.flow_params).describe()
    else:
        sim = pe.Node(SimulateFlowForProtocol(network_files=list(opts.flow_networks), n_spins=opts.flow_spins,
                                              seed=opts.seed, cache_dir=opts.sim_cache_dir,
                                              b0_threshold=opts.b0_threshold, n_threads=opts.omp_nthreads),
                      name="simulate_flow_dictionary", mem_gb=1.0, n_procs=opts.omp_nthreads)
        wf.connect([(ivim, sim, [("vascular_protocol", "protocol")]),
                    (sim, match, [("dictionary", "dictionary_file")]),
                    (sim, write_flow, [("description", "dictionary_description")])])
    return wf


def subject_wf_name(item: SessionInputs) -> str:
    """Name of a subject/session's sub-workflow (its folder in the work dir; crash files carry it)."""
    return f"single_subject_{item.subject}" + (f"_ses_{item.session}" if item.session else "") + "_wf"


def init_single_subject_wf(item: SessionInputs, opts: Options, warnings: list | None = None) -> pe.Workflow:
    """Nodes for one subject/session: tissue branch, vascular branch when the protocol allows, and the
    session's report fragment."""
    from ..interfaces.reports import SessionReport
    shells = session_protocol(item, opts)[1]
    mem = session_memory_gb(item, opts, len(shells))

    wf = pe.Workflow(name=subject_wf_name(item))
    n = len(item.dwi_files)
    read = pe.Node(ReadProtocol(dwi_files=item.dwi_files, bval_files=item.bval_files,
                                bvec_files=item.bvec_files or [""] * n, sidecar_files=item.sidecar_files or [""] * n,
                                gdur_files=item.gdur_files or [""] * n, gsep_files=item.gsep_files or [""] * n,
                                b0_threshold=opts.b0_threshold), name="read_protocol")
    if opts.small_delta_ms is not None:
        read.inputs.small_delta_ms = opts.small_delta_ms
    if opts.big_delta_ms is not None:
        read.inputs.big_delta_ms = opts.big_delta_ms
    mask = pe.Node(PrepareMask(mask_file=item.mask_file, sigma_file=item.sigma_file), name="prepare_mask")
    sph = pe.Node(SphericalMean(b0_threshold=opts.b0_threshold, shell_tolerance=opts.shell_tolerance),
                  name="spherical_mean", mem_gb=mem["spherical_mean"])
    norm = pe.Node(NormaliseB0(sigma_file=item.sigma_file, b0_threshold=opts.b0_threshold,
                               pool_series=opts.b0_pool_series, source=item.dwi_files[0]), name="normalise_b0",
                   mem_gb=mem["normalise_b0"])
    filt = pe.Node(VascularFilter(vasc_threshold=opts.vasc_threshold, b0_threshold=opts.b0_threshold),
                   name="vascular_filter", mem_gb=mem["vascular_filter"])
    match = pe.Node(MatchDictionary(dictionary_file=opts.dictionary, params=list(opts.params), fix=dict(opts.fix),
                                    tol_b=opts.match_tol_b, tol_ms=opts.match_tol_ms,
                                    b0_threshold=opts.b0_threshold, source=item.dwi_files[0]),
                    name="match_dictionary", mem_gb=1.0)
    fit = pe.Node(FitDictionary(n_averages=opts.n_averages, reg_norm=opts.reg_norm, reg_weight=opts.reg_weight,
                                bounds={k: list(v) for k, v in opts.bounds.items()}, smoothing=opts.smoothing,
                                surrogate=opts.surrogate, n_neighbours=opts.n_neighbours,
                                noise_model=opts.noise_model, device=opts.device,
                                n_threads=opts.omp_nthreads, chunk_size=opts.chunk_size, estimator=opts.estimator),
                  name="fit_histousim", n_procs=opts.omp_nthreads, mem_gb=mem["fit"])
    write = pe.Node(WriteDerivatives(out_dir=str(Path(opts.out_dir).resolve()), subject=item.subject,
                                     session=item.session or "", model="histousim",
                                     parameters=opts.fit_parameters(),
                                     sources=[f"bids::{Path(f).name}" for f in item.dwi_files]),
                    name="write_maps", run_without_submitting=True)
    wf.connect([
        (read, mask, [("dwi_file", "dwi_file")]),
        (read, sph, [("dwi_file", "dwi_file"), ("protocol", "protocol")]),
        (sph, norm, [("out_file", "in_file"), ("shells", "shells")]),
        (norm, filt, [("out_file", "in_file"), ("sigma_file", "sigma_file")]),
        (sph, filt, [("shells", "shells")]),
        (filt, match, [("protocol", "protocol")]),
        (filt, fit, [("out_file", "in_file"), ("sigma_file", "sigma_file")]),
        (mask, fit, [("mask_file", "mask_file")]),
        (match, fit, [("dictionary", "dictionary")]),
        (fit, write, [("maps", "maps"), ("units", "units"), ("info", "fit_info")]),
        (match, write, [("dictionary", "matched_dictionary")]),
        (filt, write, [("dropped", "dropped")]),
        (norm, write, [("notes", "notes")]),
    ])
    if opts.dictionary_source == "simulate":
        sim = pe.Node(SimulateForProtocol(substrates=list(opts.sim_substrates), d0in=list(opts.sim_d0),
                                          d0ex=list(opts.sim_d0), kappa=list(opts.sim_kappa),
                                          n_walkers=opts.sim_walkers, seed=opts.seed, device=opts.device,
                                          n_threads=opts.omp_nthreads, cache_dir=opts.sim_cache_dir,
                                          b0_threshold=opts.b0_threshold),
                      name="simulate_dictionary", n_procs=opts.omp_nthreads, mem_gb=2.0)
        filt.inputs.max_b = 1e12  # the dictionary is simulated for every measured b
        wf.connect([(filt, sim, [("protocol", "protocol")]),
                    (sim, match, [("dictionary", "dictionary_file")]),
                    (sim, write, [("description", "dictionary_description")])])
    report = pe.Node(SessionReport(out_dir=str(Path(opts.out_dir).resolve()), subject=item.subject,
                                   session=item.session or "", b0_threshold=opts.b0_threshold,
                                   warnings=list(warnings or [])), name="session_report",
                     mem_gb=max(0.5, mem["session_report"]))
    wf.connect([(read, report, [("protocol", "protocol")]),
                (sph, report, [("shells", "shells"), ("out_file", "sph_file")]),
                (mask, report, [("mask_file", "mask_file")]),
                (norm, report, [("out_file", "norm_file")]),
                (fit, report, [("examples_file", "tissue_examples")]),
                (write, report, [("out_files", "written_tissue")])])
    if has_vascular_branch(item, opts, shells):
        init_vascular_wf(item, opts, wf, read, mask, sph, norm, report, mem=mem)
    return wf
