"""Stage 3 of a session: the BIDS derivatives of one model, every map with its JSON sidecar (init_derivatives_wf)."""

from __future__ import annotations

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from .. import __version__
from ..interfaces.bids import WriteDerivatives
from .config import Config
from .plan import SessionPlan

#: What a derivatives writer takes.
DERIVATIVES_INPUTS = ("maps", "units", "description", "fit_info", "matched_dictionary", "dictionary_description",
                      "dropped", "notes")


def init_derivatives_wf(plan: SessionPlan, model: str, name=None) -> pe.Workflow:
    """BIDS derivatives of one model (``model``: histousim, ivim, spinflowsim): every map with its JSON
    sidecar, staged and then renamed into place (bids.derivatives). The sidecar's Model.Parameters are
    the model's own (``description``) followed by the pipeline's (sidecar_parameters); InputFiles and
    Sources come from the plan's input record. inputnode: DERIVATIVES_INPUTS. outputnode: out_files (none when
    ``maps`` is empty)."""
    item, config = plan.item, plan.config
    wf = pe.Workflow(name=name or f"{model}_derivatives_wf")
    inputnode = pe.Node(IdentityInterface(fields=list(DERIVATIVES_INPUTS)), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=["out_files"]), name="outputnode")
    write = pe.Node(WriteDerivatives(out_dir=config.run.out_dir, subject=item.subject, session=item.session or "",
                                     model=model, parameters=sidecar_parameters(config, model), space=item.space,
                                     input_files=plan.records),
                    name="write_maps", run_without_submitting=True)
    wf.connect([(inputnode, write, [(f, f) for f in DERIVATIVES_INPUTS]),
                (write, outputnode, [("out_files", "out_files")])])
    return wf


def sidecar_parameters(config: Config, model: str) -> dict:
    """Model.Parameters fields set by the pipeline for the maps of ``model`` (histousim, ivim, spinflowsim),
    written after the model's own (Model.describe()), from the Config that ran."""
    p, v = config.preprocessing, config.vascular
    common = {"ModelOfRun": v.model, "Seed": config.execution.seed, "SoftwareVersion": __version__,
              "RunOptions": config.options_fingerprint()}
    if model == "ivim":
        return common
    out = {"B0Threshold": p.b0_threshold, "VascularThreshold": p.vasc_threshold,
           "B0Normalisation": "b=0 of the measurement's own series" if p.b0_per_series else
                              "b=0 of every series at the same TE, pooled after matching each series' global scale",
           "ShellTolerance": p.shell_tolerance, "Fixed": config.tissue.fix, "ModelOfRun": v.model,
           "IvimEstimator": v.ivim_estimator, **common}
    if v.model == "joint":
        out["VascularThreshold"] = "none: every b > 0 in the joint fit; the tissue posterior on b >= " \
                                   f"{p.vasc_threshold:g} s/mm² after the vascular compartment is removed"
    if model == "spinflowsim":
        out.pop("VascularThreshold")
        out["Signal"] = ("every measurement with b > 0, (1 - fV) S_tissue + fV S_flow (joint fit)" if v.model == "joint"
                         else f"vascular signal S_V/S_V(0) of the b <= b_split measurements ({v.ivim_estimator} IVIM)")
        out["FlowDictionary"] = v.flow_dictionary or ("simulated for this protocol from " + (
            "the given networks" if v.flow_networks else "the project's generated capillary networks"))
    return out
