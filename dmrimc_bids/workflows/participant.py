"""Participant-level Nipype graph, built from the sessions' plans (plan.py: made once, by the preflight) out of
literate sub-workflows, each with an inputnode and an outputnode (fMRIPrep style):

    init_participant_wf
      init_single_subject_wf (one per subject/session)
        init_dwi_preproc_wf   read protocol -> mask -> spherical mean -> b0 normalisation     (preproc.py)
        init_tissue_wf        vascular-threshold filter -> [simulate] -> match dictionary -> FitModel (tissue.py)
        (or init_joint_wf     filter -> match both dictionaries -> FitModel(joint), the default)  (tissue.py)
        init_vascular_wf      FitModel(ivim) -> [simulate flow] -> match flow dictionary -> FitModel (vascular.py)
        init_derivatives_wf   (one per model) maps + JSON sidecars, written atomically          (derivatives.py)
        session_report        the session's report fragment (maps, figures, the models' descriptions)
      subject_report (one per subject, joining its sessions)

Every model node is the one generic FitModel interface; its options come from Config.model_options (the
options table's ``feeds``), its description (method sentence, sidecar parameters) from the model that ran.
"""

from __future__ import annotations

from nipype.pipeline import engine as pe

from .. import __version__
from ..bids.layout import SessionInputs
from ..interfaces.reports import SessionReport, SubjectReport
from . import methods
from .config import Config
from .derivatives import init_derivatives_wf
from .plan import SessionPlan, example_plan
from .preproc import init_dwi_preproc_wf, preproc_inputs
from .tissue import BRANCH_INPUTS, init_joint_wf, init_tissue_wf
from .vascular import init_vascular_wf, ivim_node


def init_participant_wf(plans: list[SessionPlan], config: Config, work_dir, name="dmrimc_bids_wf") -> pe.Workflow:
    """Top workflow: one sub-workflow per planned subject/session (plan.plan_session) and one report node per
    subject joining its sessions' fragments."""
    from nipype.interfaces.utility import Merge

    major, minor = __version__.split(".")[:2]
    wf = pe.Workflow(name=f"{name}_{major}_{minor}", base_dir=str(work_dir))
    by_subject: dict = {}
    for plan in plans:
        sub = init_single_subject_wf(plan)
        by_subject.setdefault(plan.item.subject, []).append(sub)
        wf.add_nodes([sub])
    for subject, subs in by_subject.items():
        join = pe.Node(Merge(len(subs)), name=f"report_fragments_{subject}", run_without_submitting=True)
        report = pe.Node(SubjectReport(out_dir=config.run.out_dir, subject=subject, options=config.report_options()),
                         name=f"subject_report_{subject}", mem_gb=0.5)
        for k, sub in enumerate(subs, start=1):
            wf.connect(sub, "session_report.fragment", join, f"in{k}")
        wf.connect(join, "out", report, "fragments")
    return wf


def init_example_wf(config: Config, work_dir, model: str = "joint", vascular: bool = True) -> pe.Workflow:
    """The participant workflow of one subject with no data (plan.example_plan): the graph the app builds for
    ``model`` (joint or separate), with or without the vascular branch, to draw (write_graph) or inspect."""
    plan = example_plan(config, model, vascular)
    return init_participant_wf([plan], plan.config, work_dir)


def subject_wf_name(item: SessionInputs) -> str:
    """Name of a subject/session's sub-workflow (its folder in the work dir; crash files carry it)."""
    return f"single_subject_{item.subject}" + (f"_ses_{item.session}" if item.session else "") + "_wf"


def init_single_subject_wf(plan: SessionPlan) -> pe.Workflow:
    """One subject/session as planned: preprocessing, the tissue (or joint) branch, the vascular branch when
    the protocol has IVIM b-values, one derivatives writer per model, and the session's report fragment."""
    item, config, mem = plan.item, plan.config, plan.mem
    wf = methods.LiterateWorkflow(name=subject_wf_name(item), postdesc=methods.seed_postdesc(config))
    prep = init_dwi_preproc_wf(plan)
    for field, value in preproc_inputs(plan).items():
        setattr(prep.inputs.inputnode, field, value)
    joint = plan.model == "joint"
    tissue = init_joint_wf(plan) if joint else init_tissue_wf(plan)
    write = init_derivatives_wf(plan, "histousim")
    report = pe.Node(SessionReport(out_dir=config.run.out_dir, subject=item.subject, session=item.session or "",
                                   b0_threshold=config.preprocessing.b0_threshold, warnings=list(plan.warnings),
                                   input_files=plan.records),
                     name="session_report", mem_gb=max(0.5, mem["session_report"]))
    branch_in = [(f"outputnode.{f}", f"inputnode.{f}") for f in BRANCH_INPUTS]
    wf.connect([
        (prep, tissue, list(branch_in)),  # a copy each: Nipype rewrites a connection list in place
        (tissue, write, [(f"outputnode.{f}", f"inputnode.{f}") for f in
                         ("maps", "units", "description", "fit_info", "matched_dictionary", "dropped",
                          "dictionary_description")]),
        (prep, write, [("outputnode.notes", "inputnode.notes")]),
        (prep, report, [("outputnode.protocol", "protocol"), ("outputnode.shells", "shells"),
                        ("outputnode.sph_file", "sph_file"), ("outputnode.mask_file", "mask_file"),
                        ("outputnode.norm_file", "norm_file"), ("outputnode.mask_origin", "mask_origin")]),
        (tissue, report, [("outputnode.examples_file", "tissue_examples"),
                          ("outputnode.description", "tissue_description")]),
        (write, report, [("outputnode.out_files", "written_tissue")]),
    ])
    if joint:
        _add_joint_flow_writer(wf, plan, tissue, report)
        if plan.vascular:
            _add_ivim_maps(wf, plan, prep, report)
    elif plan.vascular:
        _add_vascular_branch(wf, plan, prep, report, branch_in)
    report.inputs.pipeline_methods = wf.visit_desc()
    return wf


def _add_ivim_maps(wf, plan: SessionPlan, prep, report) -> None:
    """--model joint: the model-ivim maps beside the joint fit's (the IVIM fit of the low b, its writer)."""
    ivim = ivim_node(plan)
    write_ivim = init_derivatives_wf(plan, "ivim")
    wf.connect([
        (prep, ivim, [(f"outputnode.{f}", k) for f, k in (("norm_file", "in_file"), ("sigma_file", "sigma_file"),
                                                           ("shells", "protocol"), ("mask_file", "mask_file"))]),
        (ivim, write_ivim, [("maps", "inputnode.maps"), ("units", "inputnode.units"),
                            ("description", "inputnode.description"), ("notes", "inputnode.notes")]),
        (ivim, report, [("description", "ivim_description")]),
        (write_ivim, report, [("outputnode.out_files", "written_ivim")]),
    ])


def _add_vascular_branch(wf, plan: SessionPlan, prep, report, branch_in) -> None:
    """init_vascular_wf and its two derivatives writers (ivim, spinflowsim), wired into a session."""
    vascular = init_vascular_wf(plan)
    write_ivim = init_derivatives_wf(plan, "ivim")
    write_flow = init_derivatives_wf(plan, "spinflowsim")
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


def _add_joint_flow_writer(wf, plan: SessionPlan, joint, report) -> None:
    """The spinflowsim derivatives of --model joint (vm, vs, anb and fV), wired into a session."""
    write_flow = init_derivatives_wf(plan, "spinflowsim")
    wf.connect([
        (joint, write_flow, [("outputnode.flow_maps", "inputnode.maps"), ("outputnode.flow_units", "inputnode.units"),
                             ("outputnode.flow_description", "inputnode.description"),
                             ("outputnode.flow_info", "inputnode.fit_info"),
                             ("outputnode.flow_matched_dictionary", "inputnode.matched_dictionary"),
                             ("outputnode.flow_dictionary_description", "inputnode.dictionary_description")]),
        (joint, report, [("outputnode.flow_description", "flow_description")]),
        (write_flow, report, [("outputnode.out_files", "written_flow")]),
    ])
