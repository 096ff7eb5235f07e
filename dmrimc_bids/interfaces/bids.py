"""Nipype interface writing the fitted maps as BIDS derivatives (bids.derivatives)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from nipype.interfaces.base import BaseInterfaceInputSpec, SimpleInterface, TraitedSpec, traits

from ..bids.derivatives import DIAGNOSTICS, map_path, map_sidecar, publish, stage_copy, stage_json
from ..core.dictionary import PARAM_DESCRIPTIONS


class _WriteIn(BaseInterfaceInputSpec):
    out_dir = traits.Str(mandatory=True)
    subject = traits.Str(mandatory=True)
    session = traits.Str("", usedefault=True)
    model = traits.Str("histousim", usedefault=True)
    maps = traits.Dict(traits.Str, traits.Str, mandatory=True, desc="map name -> NIfTI")
    units = traits.Dict(traits.Str, traits.Str)
    parameters = traits.Dict(desc="Model.Parameters of every sidecar (fit options, seed, ...)")
    dictionary_description = traits.Dict(desc="SelectDictionary's summary (provenance, checksum)")
    matched_dictionary = traits.Str("", usedefault=True, desc="matched dictionary .npz (its .json: matching)")
    dropped = traits.List(traits.Dict, desc="measurements dropped before the fit")
    notes = traits.List(traits.Str, desc="normalisation notes")
    sources = traits.List(traits.Str)
    fit_info = traits.Dict(desc="the fit's info (FitDictionary): estimate placement on dictionary nodes/bounds")


class _WriteOut(TraitedSpec):
    out_files = traits.List(traits.Str)


class WriteDerivatives(SimpleInterface):
    """Write every map and its JSON sidecar, all staged first and then renamed into place."""

    input_spec = _WriteIn
    output_spec = _WriteOut
    _always_run = True

    def _run_interface(self, runtime):
        i = self.inputs
        params = dict(i.parameters)
        if i.dictionary_description:
            params["Dictionary"] = dict(i.dictionary_description)
        if i.matched_dictionary:
            matched = json.loads(Path(i.matched_dictionary).with_suffix(".json").read_text())
            params["ProtocolFitted"] = matched["protocol"]
            params["ProtocolMatching"] = matched["provenance"].get("matching", {})
        params["DroppedMeasurements"] = list(i.dropped)
        params["NormalisationNotes"] = list(i.notes)
        placement = (i.fit_info or {}).get("estimate_placement")
        if placement:
            params["EstimatePlacement"] = {
                k: {"OnDictionaryNode": v["on_node"], "AtBound": v["at_bound"], "Voxels": v["n"]}
                for k, v in placement.items()}
        staged = {}
        try:
            for name, src in i.maps.items():
                param, sd = (name[:-3], "sd") if name.endswith("_sd") else (name, None)
                nii = map_path(i.out_dir, i.subject, i.session or None, i.model, param, desc=sd)
                desc, unit = DIAGNOSTICS.get(param, (PARAM_DESCRIPTIONS.get(param, param),
                                                     (i.units or {}).get(param, "")))
                if sd:
                    desc = f"standard deviation (Fisher/Laplace, at the estimate) of: {desc}"
                staged[str(nii)] = stage_copy(src, nii)
                side = map_sidecar(i.model, param, unit, desc, params, list(i.sources))
                staged[str(nii).replace(".nii.gz", ".json")] = stage_json(side, str(nii).replace(".nii.gz", ".json"))
        except BaseException:
            for tmp in staged.values():
                os.unlink(tmp)
            raise
        self._results["out_files"] = publish(staged)
        return runtime
