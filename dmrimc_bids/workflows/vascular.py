"""Stage 2 of a session, vasculature: the IVIM fit and the SpinFlowSim fit of its vascular signal (--model
separate, init_vascular_wf), the IVIM node the joint fit writes beside its maps, and the flow dictionary either
branch matches."""

from __future__ import annotations

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from ..core.dictionary_default import load_selected
from ..interfaces.dictionary import MatchDictionary
from ..interfaces.fitting import FitModel
from ..interfaces.simulation import SimulateFlowForProtocol
from . import methods
from .config import Config
from .plan import SessionPlan
from .preproc import source_file

#: What init_vascular_wf hands on.
VASCULAR_OUTPUTS = ("ivim_maps", "ivim_units", "ivim_description", "notes", "skipped", "flow_maps", "flow_units",
                    "flow_description", "flow_examples", "matched_dictionary", "dictionary_description")


def ivim_node(plan: SessionPlan) -> pe.Node:
    """The IVIM fit (FitModel 'ivim', --ivim-estimator): fV, D, D*, S0 and the vascular signal."""
    c = plan.config
    label = "Bayesian IVIM" if c.vascular.ivim_estimator == "bayes" else "segmented IVIM"
    return pe.Node(FitModel(estimator="ivim", **c.model_options("ivim"), label=label,
                            n_threads=c.execution.omp_nthreads),
                   name="fit_ivim", n_procs=c.execution.omp_nthreads, mem_gb=max(1.0, plan.mem["fit_ivim"]))


def init_vascular_wf(plan: SessionPlan, name="vascular_wf") -> pe.Workflow:
    """Microvasculature (IVIM, then SpinFlowSim).

    fit_ivim (FitModel 'ivim', --ivim-estimator: fV, D, D*, S0 and the vascular signal S_V/S_V(0) of the low-b
    measurements, with the voxels where fV >= 0.005) -> [simulate_flow_dictionary for exactly those
    measurements, unless --flow-dictionary] -> match_flow_dictionary -> fit_spinflowsim (FitModel,
    --flow-estimator). When no voxel has a vascular signal the flow fit writes no maps and ``skipped``
    says why. inputnode: norm_file, sigma_file, shells, mask_file. outputnode: VASCULAR_OUTPUTS.
    """
    c, mem = plan.config, plan.mem
    wf = methods.LiterateWorkflow(name=name)
    inputnode = pe.Node(IdentityInterface(fields=["norm_file", "sigma_file", "shells", "mask_file"]), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=list(VASCULAR_OUTPUTS)), name="outputnode")
    ivim = ivim_node(plan)
    match = pe.Node(MatchDictionary(params=list(c.vascular.flow_params), tol_b=c.vascular.flow_match_tol_b,
                                    tol_ms=c.tissue.match_tol_ms, b0_threshold=c.preprocessing.b0_threshold,
                                    source=source_file(plan)), name="match_flow_dictionary", mem_gb=1.0)
    fit = pe.Node(FitModel(estimator=c.vascular.flow_estimator, **c.model_options("flow"),
                           n_threads=c.execution.omp_nthreads, label="SpinFlowSim fit"),
                  name="fit_spinflowsim", n_procs=c.execution.omp_nthreads, mem_gb=mem["fit"])
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
    add_flow_dictionary(wf, c, (ivim, "signal_protocol"), match, outputnode, "dictionary_description")
    return wf


def add_flow_dictionary(wf, config: Config, protocol_from: tuple, match, outputnode, description_field: str) -> None:
    """The flow dictionary of a branch: --flow-dictionary as given, or simulated for the measurements of
    protocol_from (node, output) from the networks (cached); its description goes to description_field."""
    v, ex = config.vascular, config.execution
    if v.flow_dictionary:
        match.inputs.dictionary_file = v.flow_dictionary
        setattr(outputnode.inputs, description_field, load_selected(v.flow_dictionary, v.flow_params).describe())
        return
    sim = pe.Node(SimulateFlowForProtocol(network_files=list(v.flow_networks), n_spins=v.flow_spins,
                                          seed=ex.seed, cache_dir=ex.sim_cache_dir,
                                          b0_threshold=config.preprocessing.b0_threshold, n_threads=ex.omp_nthreads),
                  name="simulate_flow_dictionary", mem_gb=1.0, n_procs=ex.omp_nthreads)
    node, field = protocol_from
    wf.connect([(node, sim, [(field, "protocol")]), (sim, match, [("dictionary", "dictionary_file")]),
                (sim, outputnode, [("description", description_field)])])


def _as_list(reason: str) -> list:
    """A node output's reason ('' for none) as the report's list of lines."""
    return [f"SpinFlowSim: {reason}"] if reason else []
