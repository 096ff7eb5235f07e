"""Participant-level Nipype graph: one sub-workflow per subject/session.

read protocol -> mask -> spherical mean -> b0 normalisation -> vascular-threshold filter ->
dictionary matching -> dictionary fit -> BIDS derivatives. The dictionary is selected once for all
subjects. Later issues hang the vascular branch (segmented IVIM, SpinFlowSim fit) and the report
off ``normalise``'s outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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

    def fit_parameters(self) -> dict:
        """Model.Parameters common to every map."""
        return {"FitMethod": "dictionary grid search + projected Levenberg-Marquardt on a thin-plate-spline "
                             f"surrogate ({self.surrogate}, {self.n_neighbours} nearest entries per local model)"
                             if self.surrogate == "local" else "dictionary grid search + projected "
                             "Levenberg-Marquardt on a thin-plate-spline surrogate (global)",
                "NoiseModel": {"gaussian": "offset-Gaussian", "rician": "Rician"}[self.noise_model],
                "Uncertainty": "desc-sd maps: sqrt(diag(inverse Fisher information)) at the estimate",
                "NoiseFloor": "sigma*sqrt(NAverages)*sqrt(pi/2) (no noise map: least squares)",
                "NAverages": self.n_averages, "Regularisation": {"Norm": self.reg_norm, "Weight": self.reg_weight},
                "Bounds": self.bounds or "dictionary range", "SurrogateSmoothing": self.smoothing,
                "B0Threshold": self.b0_threshold, "VascularThreshold": self.vasc_threshold,
                "ShellTolerance": self.shell_tolerance, "Fixed": self.fix, "Seed": self.seed,
                "SoftwareVersion": __version__}


def preflight(item: SessionInputs, opts: Options, dictionary=None) -> dict:
    """Run every input check of the graph on headers and metadata only (fast), raising InputError.

    Returns a summary (volumes, shells, fitted and dropped measurements) for logging.
    """
    protos = [series_protocol(d, b, bv or None, sc or None, gd or None, gs or None, opts.small_delta_ms,
                              opts.big_delta_ms, opts.b0_threshold)
              for d, b, bv, sc, gd, gs in zip(item.dwi_files, item.bval_files, item.bvec_files,
                                              item.sidecar_files, item.gdur_files, item.gsep_files)]
    proto = Protocol.concatenate(protos)
    prepare_mask(item.dwi_files[0], item.mask_file or None, item.sigma_file or None)
    shells, _ = preprocess.shell_assignment(proto, opts.b0_threshold, opts.shell_tolerance)
    source = item.dwi_files[0]
    plan = preprocess.normalisation_plan(shells, opts.b0_threshold, source)
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
    return {"volumes": len(proto), "shells": len(shells), "fitted": int(filt.keep.size),
            "warnings": filt.warnings() + plan.notes}


def init_participant_wf(items: list[SessionInputs], opts: Options, work_dir, name="dmrimc_bids_wf"):
    """Top workflow: the dictionary selection node plus one sub-workflow per subject/session."""
    major, minor = __version__.split(".")[:2]
    wf = pe.Workflow(name=f"{name}_{major}_{minor}", base_dir=str(work_dir))
    select = pe.Node(SelectDictionary(dictionary_file=opts.dictionary, params=list(opts.params), fix=dict(opts.fix)),
                     name="select_dictionary", mem_gb=1.0)
    for item in items:
        sub = init_single_subject_wf(item, opts)
        if opts.dictionary_source == "simulate":
            wf.add_nodes([sub])
        else:
            wf.connect([(select, sub, [("max_b", "vascular_filter.max_b"),
                                       ("description", "write_maps.dictionary_description")])])
    return wf


def init_single_subject_wf(item: SessionInputs, opts: Options) -> pe.Workflow:
    """Nodes for one subject/session (tissue branch)."""
    wf = pe.Workflow(name=f"single_subject_{item.subject}" + (f"_ses_{item.session}" if item.session else "") + "_wf")
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
                  name="spherical_mean")
    norm = pe.Node(NormaliseB0(sigma_file=item.sigma_file, b0_threshold=opts.b0_threshold,
                               source=item.dwi_files[0]), name="normalise_b0")
    filt = pe.Node(VascularFilter(vasc_threshold=opts.vasc_threshold, b0_threshold=opts.b0_threshold),
                   name="vascular_filter")
    match = pe.Node(MatchDictionary(dictionary_file=opts.dictionary, params=list(opts.params), fix=dict(opts.fix),
                                    tol_b=opts.match_tol_b, tol_ms=opts.match_tol_ms,
                                    b0_threshold=opts.b0_threshold, source=item.dwi_files[0]),
                    name="match_dictionary", mem_gb=1.0)
    fit = pe.Node(FitDictionary(n_averages=opts.n_averages, reg_norm=opts.reg_norm, reg_weight=opts.reg_weight,
                                bounds={k: list(v) for k, v in opts.bounds.items()}, smoothing=opts.smoothing,
                                surrogate=opts.surrogate, n_neighbours=opts.n_neighbours,
                                noise_model=opts.noise_model, device=opts.device,
                                n_threads=opts.omp_nthreads, chunk_size=opts.chunk_size),
                  name="fit_histousim", n_procs=opts.omp_nthreads, mem_gb=2.0)
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
        (fit, write, [("maps", "maps"), ("units", "units")]),
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
    return wf
