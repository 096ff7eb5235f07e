"""Nipype interfaces of the group level (reports.group): ROI statistics per subject/session, then the
cohort tables and report."""

from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from ..core.errors import InputError
from .io import cwd_path


class _RoiIn(BaseInterfaceInputSpec):
    out_dir = traits.Str(mandatory=True, desc="participant-level derivatives folder")
    subject = traits.Str(mandatory=True, desc="participant label (no sub- prefix)")
    session = traits.Str("", usedefault=True, desc="session label ('' for none)")
    roi_specs = traits.List(traits.Dict, desc='[{"label", "file", "kind": mask|dseg|atlas, "names": TSV}]')
    sample_size = traits.Int(5000, usedefault=True, desc="voxels sampled for the cohort correlation")
    seed = traits.Int(0, usedefault=True, desc="random seed (walker/spin streams)")


class _RoiOut(TraitedSpec):
    result_file = File(exists=True, desc="JSON: ROI rows, units, voxel sample, or the error")


class RoiStatistics(SimpleInterface):
    """ROI statistics of a subject/session's maps. Bad input (e.g. an ROI on another grid) is recorded
    in the result, not raised, so that one subject never stops the cohort."""

    input_spec = _RoiIn
    output_spec = _RoiOut

    def _run_interface(self, runtime):
        from ..reports.group import session_statistics
        i = self.inputs
        try:
            res = session_statistics(i.out_dir, i.subject, i.session or None, list(i.roi_specs), i.sample_size,
                                     i.seed)
        except InputError as exc:
            res = {"subject": i.subject, "session": i.session, "error": str(exc), "exit_code": exc.exit_code}
        self._results["result_file"] = cwd_path(runtime, "roi_statistics.json")
        Path(self._results["result_file"]).write_text(json.dumps(res))
        return runtime


class _GroupIn(BaseInterfaceInputSpec):
    out_dir = traits.Str(mandatory=True, desc="derivatives folder (tables and report go there)")
    result_files = traits.List(File(exists=True), mandatory=True,
                               desc="RoiStatistics results (JSON), one per subject/session")
    failures = traits.List(traits.Dict, desc="failed/missing subjects from the participant logs")
    participants = traits.Dict(desc="participants.tsv rows by subject label")
    group_column = traits.Str("", usedefault=True, desc="participants.tsv column splitting the distributions")
    mixed_runs = traits.List(traits.Str, desc="options in which the pooled runs differ (the report's banner)")


class _GroupOut(TraitedSpec):
    tables = traits.Dict(traits.Str, traits.Str, desc="model -> group_<model>.tsv")
    report = traits.Str(desc="group.html")
    failures = traits.List(traits.Dict, desc="all failures, the group level's own included")


class GroupReport(SimpleInterface):
    """group_<model>.tsv (+ JSON data dictionary) and group.html."""

    input_spec = _GroupIn
    output_spec = _GroupOut
    _always_run = True

    def _run_interface(self, runtime):
        from ..reports.group import render_group, write_tables
        i = self.inputs
        results, failures = [], list(i.failures)
        for f in i.result_files:
            res = json.loads(Path(f).read_text())
            if "error" in res:
                failures.append({"label": f"sub-{res['subject']}" + (f"_ses-{res['session']}" if res["session"]
                                                                      else ""),
                                 "exit_code": res["exit_code"], "stage": "group", "message": res["error"], "log": ""})
            else:
                results.append(res)
        tables = write_tables(i.out_dir, results, dict(i.participants))
        self._results["tables"] = tables
        self._results["report"] = render_group(i.out_dir, results, failures, tables, i.group_column or None,
                                               dict(i.participants), list(i.mixed_runs or []))
        self._results["failures"] = failures
        return runtime
