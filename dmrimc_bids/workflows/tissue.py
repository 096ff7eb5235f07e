"""Stage 2 of a session, tissue: the Histo-μSim fit of --model separate (init_tissue_wf) and the joint tissue +
vascular fit of --model joint (init_joint_wf)."""

from __future__ import annotations

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from ..interfaces.dictionary import MatchDictionary
from ..interfaces.fitting import FitModel
from ..interfaces.preprocess import VascularFilter
from ..interfaces.simulation import SimulateForProtocol
from . import methods
from .plan import SessionPlan
from .preproc import source_file
from .vascular import add_flow_dictionary

#: What a tissue branch takes from the preprocessing.
BRANCH_INPUTS = ("norm_file", "sigma_file", "shells", "mask_file")

#: What init_tissue_wf hands on (init_joint_wf: these and JOINT_FLOW_OUTPUTS).
TISSUE_OUTPUTS = ("maps", "units", "description", "fit_info", "examples_file", "matched_dictionary", "dropped",
                  "dictionary_description")
JOINT_FLOW_OUTPUTS = ("flow_maps", "flow_units", "flow_description", "flow_info", "flow_matched_dictionary",
                      "flow_dictionary_description")


def _match_tissue(plan: SessionPlan) -> pe.Node:
    """The tissue dictionary's columns for the measured (b, δ, Δ) (the plan's dictionary, or a simulated one)."""
    c = plan.config
    match = pe.Node(MatchDictionary(params=list(c.tissue.params), fix=dict(c.tissue.fix), tol_b=c.tissue.match_tol_b,
                                    tol_ms=c.tissue.match_tol_ms, b0_threshold=c.preprocessing.b0_threshold,
                                    source=source_file(plan)), name="match_dictionary", mem_gb=1.0)
    if c.tissue.dictionary:
        match.inputs.dictionary_file = c.tissue.dictionary
    return match


def _from_plan(plan: SessionPlan, filt, outputnode) -> None:
    """The matched dictionary's largest b (the filter's upper bound) and description, from the plan (a graph
    without data has neither)."""
    if plan.max_b is not None:
        filt.inputs.max_b = plan.max_b
    if plan.dictionary_description is not None:
        outputnode.inputs.dictionary_description = plan.dictionary_description


def _nodes(fields) -> tuple:
    return (pe.Node(IdentityInterface(fields=list(BRANCH_INPUTS)), name="inputnode"),
            pe.Node(IdentityInterface(fields=list(fields)), name="outputnode"))


def init_tissue_wf(plan: SessionPlan, name="tissue_wf") -> pe.Workflow:
    """Tissue microstructure (Histo-μSim).

    vascular_filter (drop b below --vasc-threshold and above the dictionary's largest b) ->
    [simulate_dictionary for exactly these measurements, --dictionary-source simulate] ->
    match_dictionary (the dictionary's columns for the measured (b, δ, Δ)) -> fit_histousim (FitModel,
    estimator --estimator). inputnode: BRANCH_INPUTS. outputnode: TISSUE_OUTPUTS (dictionary_description:
    a simulated dictionary's; a matched one's comes from the plan).
    """
    c, mem = plan.config, plan.mem
    wf = methods.LiterateWorkflow(name=name, desc=methods.separate_desc() if c.vascular.model == "separate" else None)
    inputnode, outputnode = _nodes(TISSUE_OUTPUTS)
    filt = pe.Node(VascularFilter(vasc_threshold=c.preprocessing.vasc_threshold,
                                  b0_threshold=c.preprocessing.b0_threshold),
                   name="vascular_filter", mem_gb=mem["vascular_filter"])
    match = _match_tissue(plan)
    fit = pe.Node(FitModel(estimator=c.tissue.estimator, **c.model_options("tissue"),
                           n_threads=c.execution.omp_nthreads, label="Histo-uSim fit"),
                  name="fit_histousim", n_procs=c.execution.omp_nthreads, mem_gb=mem["fit"])
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
    if c.tissue.dictionary_source != "simulate":
        _from_plan(plan, filt, outputnode)
        return wf
    sim = pe.Node(SimulateForProtocol(substrates=list(c.tissue.sim_substrates), d0in=list(c.tissue.sim_d0),
                                      d0ex=list(c.tissue.sim_d0), kappa=list(c.tissue.sim_kappa),
                                      n_walkers=c.tissue.sim_walkers, seed=c.execution.seed, device=c.execution.device,
                                      n_threads=c.execution.omp_nthreads, cache_dir=c.execution.sim_cache_dir,
                                      b0_threshold=c.preprocessing.b0_threshold),
                  name="simulate_dictionary", n_procs=c.execution.omp_nthreads, mem_gb=2.0)
    filt.inputs.max_b = 1e12  # the dictionary is simulated for every measured b
    wf.connect([(filt, sim, [("protocol", "protocol")]), (sim, match, [("dictionary", "dictionary_file")]),
                (sim, outputnode, [("description", "dictionary_description")])])
    return wf


def init_joint_wf(plan: SessionPlan, name="joint_wf") -> pe.Workflow:
    """Tissue and vasculature in one posterior (--model joint, core/fitting/joint.py).

    measurements (every b > 0 up to the tissue dictionary's largest b) -> match_dictionary (tissue) and
    [simulate_flow_dictionary for these measurements, unless --flow-dictionary] -> match_flow_dictionary ->
    fit_joint. inputnode: BRANCH_INPUTS. outputnode: TISSUE_OUTPUTS and JOINT_FLOW_OUTPUTS.
    """
    c, mem = plan.config, plan.mem
    wf = methods.LiterateWorkflow(name=name, desc=methods.joint_desc())
    inputnode, outputnode = _nodes(TISSUE_OUTPUTS + JOINT_FLOW_OUTPUTS)
    filt = pe.Node(VascularFilter(vasc_threshold=0.0, b0_threshold=c.preprocessing.b0_threshold), name="measurements",
                   mem_gb=mem["vascular_filter"])
    _from_plan(plan, filt, outputnode)
    match = _match_tissue(plan)
    match_flow = pe.Node(MatchDictionary(params=list(c.vascular.flow_params), tol_b=c.vascular.flow_match_tol_b,
                                         tol_ms=c.tissue.match_tol_ms, b0_threshold=c.preprocessing.b0_threshold,
                                         source=source_file(plan)), name="match_flow_dictionary", mem_gb=1.0)
    fit = pe.Node(FitModel(estimator="joint", **c.model_options("joint"), label="joint fit",
                           n_threads=c.execution.omp_nthreads),
                  name="fit_joint", n_procs=c.execution.omp_nthreads, mem_gb=mem["fit"])
    wf.connect([
        (inputnode, filt, [("norm_file", "in_file"), ("sigma_file", "sigma_file"), ("shells", "shells")]),
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
    add_flow_dictionary(wf, c, (filt, "protocol"), match_flow, outputnode, "flow_dictionary_description")
    return wf
