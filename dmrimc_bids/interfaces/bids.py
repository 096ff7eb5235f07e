"""Nipype interface writing the fitted maps as BIDS derivatives (bids.derivatives)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits

from ..bids.derivatives import DIAGNOSTICS, map_path, map_sidecar, publish, stage_copy, stage_json
from ..bids.provenance import sources
from ..core.dictionary import PARAM_DESCRIPTIONS


class _WriteIn(BaseInterfaceInputSpec):
    out_dir = traits.Str(mandatory=True, desc="derivatives folder")
    subject = traits.Str(mandatory=True, desc="participant label (no sub- prefix)")
    session = traits.Str("", usedefault=True, desc="session label ('' for none)")
    model = traits.Str("histousim", usedefault=True, desc="model label of the file names (model-<label>)")
    maps = traits.Dict(traits.Str, File(exists=True), mandatory=True, desc="map name -> NIfTI (empty: write nothing)")
    units = traits.Dict(traits.Str, traits.Str, desc="parameter -> unit")
    description = traits.Dict(desc="FitModel description: its 'parameters' open every sidecar's Model.Parameters")
    parameters = traits.Dict(desc="Model.Parameters fields of the pipeline (Config.sidecar_parameters)")
    dictionary_description = traits.Dict(desc="the dictionary's summary for the sidecars (provenance, checksum)")
    matched_dictionary = File(exists=True, desc="matched dictionary .npz (its .json: the matching)")
    dropped = traits.List(traits.Dict, desc="measurements dropped before the fit")
    notes = traits.List(traits.Str, desc="normalisation and model notes")
    space = traits.Str("dwi", usedefault=True, desc="space entity of the maps (the input DWI's)")
    input_files = traits.Dict(desc="bids.provenance.input_record: the DWI, mask and σ map used (URI, SHA-256)")
    fit_info = traits.Dict(desc="the fit's info: estimate placement on dictionary nodes and bounds")


class _WriteOut(TraitedSpec):
    out_files = traits.List(traits.Str, desc="the files written (maps and sidecars)")


class WriteDerivatives(SimpleInterface):
    """Write every map and its JSON sidecar, all staged first and then renamed into place."""

    input_spec = _WriteIn
    output_spec = _WriteOut
    _always_run = True

    def _run_interface(self, runtime):
        i = self.inputs
        value = lambda x, default: x if isdefined(x) else default  # noqa: E731
        params = {**value(i.description, {}).get("parameters", {}), **value(i.parameters, {})}
        if value(i.dictionary_description, {}):
            params["Dictionary"] = dict(i.dictionary_description)
        if isdefined(i.matched_dictionary):
            matched = json.loads(Path(i.matched_dictionary).with_suffix(".json").read_text())
            params["ProtocolFitted"] = matched["protocol"]
            params["ProtocolMatching"] = matched["provenance"].get("matching", {})
        params["DroppedMeasurements"] = list(value(i.dropped, []))
        params["NormalisationNotes"] = list(value(i.notes, []))
        placement = value(i.fit_info, {}).get("estimate_placement")
        if placement:
            params["EstimatePlacement"] = {
                k: {"OnDictionaryNode": v["on_node"], "AtBound": v["at_bound"], "Voxels": v["n"]}
                for k, v in placement.items()}
        staged = {}
        try:
            for name, src in i.maps.items():
                param, sd = (name[:-3], "sd") if name.endswith("_sd") else (name, None)
                nii = map_path(i.out_dir, i.subject, i.session or None, i.model, param, desc=sd, space=i.space)
                desc, unit = DIAGNOSTICS.get(param, (PARAM_DESCRIPTIONS.get(param, param),
                                                     value(i.units, {}).get(param, "")))
                if sd:
                    kind = ("posterior" if "posterior" in str(params.get("Uncertainty", "")) else
                            "Fisher/Laplace, at the estimate")
                    desc = f"standard deviation ({kind}) of: {desc}"
                staged[str(nii)] = stage_copy(src, nii)
                record = value(i.input_files, {})
                side = map_sidecar(i.model, param, unit, desc, params, sources(record))
                side["InputFiles"] = record
                staged[str(nii).replace(".nii.gz", ".json")] = stage_json(side, str(nii).replace(".nii.gz", ".json"))
        except BaseException:
            for tmp in staged.values():
                os.unlink(tmp)
            raise
        self._results["out_files"] = publish(staged)
        return runtime
