"""Stage 1 of a session: reading the DWI runs with their timing, the mask, directional averaging and b=0
normalisation (init_dwi_preproc_wf)."""

from __future__ import annotations

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from ..bids.layout import DwiRun, run_columns
from ..interfaces.preprocess import NormaliseB0, PrepareMask, ReadProtocol, SphericalMean
from . import methods
from .plan import SessionPlan

#: The preprocessing's inputs: the runs' per-column files (bids.layout.run_columns), the mask and the σ map.
PREPROC_INPUTS = tuple(f"{c}_files" for c in DwiRun.COLUMNS) + ("mask_file", "sigma_file")

#: What it hands on.
PREPROC_OUTPUTS = ("protocol", "shells", "sph_file", "mask_file", "norm_file", "sigma_file", "notes", "mask_origin")


def source_file(plan: SessionPlan) -> str:
    """The file named in a node's error messages: the session's first DWI."""
    return plan.item.dwi_files[0] if plan.item.runs else ""


def preproc_inputs(plan: SessionPlan) -> dict:
    """The values of init_dwi_preproc_wf's inputnode for a session (its runs as columns; '' for none)."""
    return {**run_columns(plan.item.runs), "mask_file": plan.item.mask_file, "sigma_file": plan.item.sigma_file}


def init_dwi_preproc_wf(plan: SessionPlan, name="dwi_preproc_wf") -> pe.Workflow:
    """Preprocessing of one session's DWI series.

    read_protocol (runs concatenated, per-volume b/δ/Δ/TE) -> prepare_mask (grid checked) ->
    spherical_mean (per (b, δ, Δ, TE) shell) -> normalise_b0 (pooled b=0 per TE, σ map too).
    inputnode: PREPROC_INPUTS (set by the session workflow from the plan; the mask and σ map are read only
    where the plan has them).
    outputnode: protocol, shells, sph_file, mask_file, norm_file, sigma_file (absent without a σ map),
    notes (normalisation notes), mask_origin (the given mask, or how it was built from the b=0).
    """
    config, mem = plan.config, plan.mem
    pre = config.preprocessing
    wf = methods.LiterateWorkflow(name=name, desc=methods.preproc_desc(config))
    inputnode = pe.Node(IdentityInterface(fields=list(PREPROC_INPUTS)), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=list(PREPROC_OUTPUTS)), name="outputnode")
    read = pe.Node(ReadProtocol(b0_threshold=pre.b0_threshold), name="read_protocol")
    for trait in ("small_delta_ms", "big_delta_ms"):
        if config.get(trait) is not None:
            setattr(read.inputs, trait, config.get(trait))
    if config.inputs.timing:
        read.inputs.timing = {k: list(v) for k, v in config.run_timing().items()}
    mask = pe.Node(PrepareMask(b0_threshold=pre.b0_threshold), name="prepare_mask", mem_gb=mem["spherical_mean"])
    norm = pe.Node(NormaliseB0(b0_threshold=pre.b0_threshold, pool_series=not pre.b0_per_series,
                               source=source_file(plan)), name="normalise_b0", mem_gb=mem["normalise_b0"])
    sph = pe.Node(SphericalMean(b0_threshold=pre.b0_threshold, shell_tolerance=pre.shell_tolerance),
                  name="spherical_mean", mem_gb=mem["spherical_mean"])
    wf.connect([
        (inputnode, read, [(f"{c}_files", f"{c}_files") for c in DwiRun.COLUMNS]),
        (read, mask, [("dwi_file", "dwi_file"), ("protocol", "protocol")]),
        (read, sph, [("dwi_file", "dwi_file"), ("protocol", "protocol")]),
        (sph, norm, [("out_file", "in_file"), ("shells", "shells")]),
        (read, outputnode, [("protocol", "protocol")]),
        (sph, outputnode, [("shells", "shells"), ("out_file", "sph_file")]),
        (mask, outputnode, [("mask_file", "mask_file"), ("mask_origin", "mask_origin")]),
        (norm, outputnode, [("out_file", "norm_file"), ("sigma_file", "sigma_file"), ("notes", "notes")]),
    ])
    if plan.item.mask_file:   # the optional files: connected where the plan has them (else built / absent)
        wf.connect(inputnode, "mask_file", mask, "mask_file")
    if plan.item.sigma_file:
        wf.connect([(inputnode, mask, [("sigma_file", "sigma_file")]), (inputnode, norm, [("sigma_file", "sigma_file")])])
    return wf
