"""Stage 3 of a session: the BIDS derivatives of one model, every map with its JSON sidecar (init_derivatives_wf)."""

from __future__ import annotations

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from ..interfaces.bids import WriteDerivatives
from .plan import SessionPlan

#: What a derivatives writer takes.
DERIVATIVES_INPUTS = ("maps", "units", "description", "fit_info", "matched_dictionary", "dictionary_description",
                      "dropped", "notes")


def init_derivatives_wf(plan: SessionPlan, model: str, name=None) -> pe.Workflow:
    """BIDS derivatives of one model (``model``: histousim, ivim, spinflowsim): every map with its JSON
    sidecar, staged and then renamed into place (bids.derivatives). The sidecar's Model.Parameters are
    the model's own (``description``) followed by the pipeline's (Config.sidecar_parameters); InputFiles and
    Sources come from the plan's input record. inputnode: DERIVATIVES_INPUTS. outputnode: out_files (none when
    ``maps`` is empty)."""
    item, config = plan.item, plan.config
    wf = pe.Workflow(name=name or f"{model}_derivatives_wf")
    inputnode = pe.Node(IdentityInterface(fields=list(DERIVATIVES_INPUTS)), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=["out_files"]), name="outputnode")
    write = pe.Node(WriteDerivatives(out_dir=config.run.out_dir, subject=item.subject, session=item.session or "",
                                     model=model, parameters=config.sidecar_parameters(model), space=item.space,
                                     input_files=plan.records),
                    name="write_maps", run_without_submitting=True)
    wf.connect([(inputnode, write, [(f, f) for f in DERIVATIVES_INPUTS]),
                (write, outputnode, [("out_files", "out_files")])])
    return wf
