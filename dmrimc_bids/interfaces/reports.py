"""Nipype interfaces of the reports (reports.subject): a session's fragment, then the subject's HTML."""

from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits

from ..core.protocol import B0_THRESHOLD
from .io import cwd_path


class _SessionIn(BaseInterfaceInputSpec):
    out_dir = traits.Str(mandatory=True, desc="derivatives folder holding the session's maps")
    subject = traits.Str(mandatory=True, desc="participant label (no sub- prefix)")
    session = traits.Str("", usedefault=True, desc="session label ('' for none)")
    protocol = File(exists=True, mandatory=True, desc="per-volume protocol table as acquired")
    shells = File(exists=True, mandatory=True, desc="per-shell protocol table")
    sph_file = File(exists=True, mandatory=True, desc="directionally averaged signal (b=0 underlay)")
    mask_file = File(exists=True, mandatory=True, desc="fitted voxels (uint8)")
    norm_file = File(exists=True, desc="b0-normalised signal of all shells (IVIM panel)")
    tissue_examples = File(exists=True, desc="FitModel examples of the tissue fit")
    flow_examples = File(exists=True, desc="FitModel examples of the vascular fit")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b at or below this is b=0 [s/mm²]")
    warnings = traits.List(traits.Str, desc="preflight warnings shown at the top of the section")
    skipped = traits.List(traits.Str, desc="why a model wrote no maps (shown with the warnings)")
    tissue_description = traits.Dict(desc="FitModel description of the tissue model (methods text)")
    ivim_description = traits.Dict(desc="FitModel description of segmented IVIM")
    flow_description = traits.Dict(desc="FitModel description of the flow model")
    written_tissue = traits.List(traits.Str, desc="files written by the tissue writer (orders the node after it)")
    written_ivim = traits.List(traits.Str, desc="files written by the IVIM writer")
    written_flow = traits.List(traits.Str, desc="files written by the SpinFlowSim writer")
    input_files = traits.Dict(desc="bids.provenance.input_record: the DWI, mask and σ map used (URI, SHA-256)")
    mask_origin = traits.Str(desc="how the fitted mask was made (PrepareMask)")
    pipeline_methods = traits.Dict(traits.Str, traits.List(traits.Str),
                                   desc="LiterateWorkflow.visit_desc() of the session's graph: its steps' sentences")


class _SessionOut(TraitedSpec):
    fragment = File(exists=True, desc="JSON fragment: tables and figures of the session")


class SessionReport(SimpleInterface):
    """A session's part of the subject report (reports.subject.session_fragment)."""

    input_spec = _SessionIn
    output_spec = _SessionOut
    _always_run = True  # reads the derivatives, which a rerun may have rewritten

    def _run_interface(self, runtime):
        from ..reports.subject import session_fragment
        i = self.inputs
        value = lambda x, default="": x if isdefined(x) else default  # noqa: E731
        methods = {"histousim": value(i.tissue_description, {}), "ivim": value(i.ivim_description, {}),
                   "spinflowsim": value(i.flow_description, {})}
        frag = session_fragment(i.out_dir, i.subject, i.session or None, i.protocol, i.shells, i.sph_file,
                                i.mask_file, value(i.norm_file), {"histousim": value(i.tissue_examples),
                                                                  "spinflowsim": value(i.flow_examples)},
                                i.b0_threshold, list(value(i.warnings, [])) + list(value(i.skipped, [])),
                                {k: v for k, v in methods.items() if v})
        frag["inputs"] = _input_rows(value(i.input_files, {}), value(i.mask_origin))
        frag["pipeline"] = dict(value(i.pipeline_methods, {}))
        self._results["fragment"] = cwd_path(runtime, "fragment.json")
        Path(self._results["fragment"]).write_text(json.dumps(frag))
        return runtime


def _input_rows(record: dict, mask_origin: str) -> list[dict]:
    """The report's input-provenance table: one row per file (role, URI, SHA-256, how it was chosen)."""
    rows = [{"role": f"DWI run {k + 1}", "uri": d["URI"], "sha256": d["SHA256"], "origin": ""}
            for k, d in enumerate(record.get("DWI", []))]
    for role, key in (("mask", "Mask"), ("noise σ map", "NoiseMap")):
        entry = record.get(key, {})
        origin = entry.get("Origin", "")
        if key == "Mask" and not entry.get("URI") and mask_origin:
            origin = mask_origin
        rows.append({"role": role, "uri": entry.get("URI", "(none)"), "sha256": entry.get("SHA256", ""),
                     "origin": origin})
    return rows


class _SubjectIn(BaseInterfaceInputSpec):
    out_dir = traits.Str(mandatory=True, desc="derivatives folder (the report is written there)")
    subject = traits.Str(mandatory=True, desc="participant label (no sub- prefix)")
    fragments = traits.List(File(exists=True), mandatory=True, desc="SessionReport fragments")
    options = traits.Dict(desc="run options quoted in the methods text")


class _SubjectOut(TraitedSpec):
    report = traits.Str(desc="sub-<label>.html")


class SubjectReport(SimpleInterface):
    """sub-<label>.html in the output folder (atomic), sessions as sections."""

    input_spec = _SubjectIn
    output_spec = _SubjectOut
    _always_run = True

    def _run_interface(self, runtime):
        from ..reports.subject import render_subject
        i = self.inputs
        frags = [json.loads(Path(f).read_text()) for f in i.fragments]
        out = Path(i.out_dir) / f"sub-{i.subject}.html"
        self._results["report"] = render_subject(i.subject, frags, out, dict(i.options))
        return runtime
