"""Nipype interface writing the fitted maps as BIDS derivatives (bids.derivatives)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits

from ..bids.derivatives import (DIAGNOSTICS, fit_record_path, map_path, map_sidecar, publish, split_parameters,
                                stage_copy, stage_json)
from ..bids.provenance import sources
from ..core.dictionary import PARAM_DESCRIPTIONS


#: Descriptions of a parameter that depend on the model writing it (--model joint writes fV with the flow maps).
MODEL_PARAM_DESCRIPTIONS = {("spinflowsim", "fV"): "vascular signal fraction (joint tissue + vascular fit of every "
                                                   "b > 0, posterior mean)"}


def headline(model: str, param: str, params: dict) -> dict:
    """The sidecar fields that say which fV map to read: the joint fit's where it ran (ModelOfRun joint), else
    IVIM's; {} for other parameters."""
    if param != "fV":
        return {}
    joint = params.get("ModelOfRun") == "joint"
    if model == "spinflowsim" or not joint:
        how = ("the joint tissue + vascular posterior of every b > 0 under the session's vascular prior" if joint
               else f"{params.get('IvimEstimator', '')} IVIM of the low-b signal".strip())
        return {"Headline": True, "HeadlineNote": f"the fV map to read for this run: {how}"}
    return {"Headline": False,
            "HeadlineNote": "the IVIM estimate (bi-exponential fit of b <= BMax alone), written beside the headline "
                            "fV of this run, model-spinflowsim_param-fV (the joint fit of every b > 0 under the "
                            "session's vascular prior)"}


class _WriteIn(BaseInterfaceInputSpec):
    out_dir = traits.Str(mandatory=True, desc="derivatives folder")
    subject = traits.Str(mandatory=True, desc="participant label (no sub- prefix)")
    session = traits.Str("", usedefault=True, desc="session label ('' for none)")
    model = traits.Str("histousim", usedefault=True, desc="model label of the file names (model-<label>)")
    maps = traits.Dict(traits.Str, File(exists=True), mandatory=True, desc="map name -> NIfTI (empty: write nothing)")
    units = traits.Dict(traits.Str, traits.Str, desc="parameter -> unit")
    description = traits.Dict(desc="FitModel description: its 'parameters' open every sidecar's Model.Parameters")
    parameters = traits.Dict(desc="Model.Parameters fields of the pipeline (workflows.derivatives.sidecar_parameters)")
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
        identifiability = value(i.fit_info, {}).get("identifiability")
        if identifiability or any(n.endswith("_contraction") for n in i.maps):
            from ..core.fitting.posterior import IDENTIFIABILITY
            params["IdentifiabilityDefinition"] = IDENTIFIABILITY
        if value(i.fit_info, {}).get("vascular_prior"):
            params["VascularPrior"] = value(i.fit_info, {})["vascular_prior"]
        if identifiability:
            params["Identifiability"] = {k: {"MedianContraction": v["median"], "P10": v["p10"], "P90": v["p90"],
                                             "Verdict": v["verdict"]} for k, v in identifiability.items()}
        model_error = value(i.fit_info, {}).get("model_error_rms")
        if model_error:
            params["DictionaryModelErrorRMS"] = model_error
        calibration = value(i.fit_info, {}).get("interval_calibration")
        if calibration:
            params["IntervalCalibration"] = calibration
        placement = value(i.fit_info, {}).get("estimate_placement")
        if placement:
            params["EstimatePlacement"] = {
                k: {"OnDictionaryNode": v["on_node"], "OnDictionaryNodeByChance": v.get("on_node_chance"),
                    "AtBound": v["at_bound"], "Voxels": v["n"]}
                for k, v in placement.items()}
        params, extra_files = split_parameters(params, i.out_dir, fit_record_path(
            i.out_dir, i.subject, i.session or None, i.model, space=i.space))
        staged = {}
        try:
            for path, obj in (extra_files.items() if i.maps else ()):
                staged[str(path)] = stage_json(obj, path)
            for name, src in i.maps.items():
                param, desc_entity = split_map_name(name)
                nii = map_path(i.out_dir, i.subject, i.session or None, i.model, param, desc=desc_entity,
                               space=i.space)
                desc, unit = DIAGNOSTICS.get(param, (MODEL_PARAM_DESCRIPTIONS.get(
                    (i.model, param), PARAM_DESCRIPTIONS.get(param, param)), value(i.units, {}).get(param, "")))
                if desc_entity:
                    desc, unit = uncertainty_description(desc_entity, desc, unit, params)
                staged[str(nii)] = stage_copy(src, nii)
                record = value(i.input_files, {})
                side = map_sidecar(i.model, param, unit, desc, params, sources(record))
                side.update(headline(i.model, param, params) if not desc_entity else {})
                side["InputFiles"] = record
                staged[str(nii).replace(".nii.gz", ".json")] = stage_json(side, str(nii).replace(".nii.gz", ".json"))
        except BaseException:
            for tmp in staged.values():
                os.unlink(tmp)
            raise
        self._results["out_files"] = publish(staged)
        return runtime


#: desc entities of the uncertainty maps (a map named '<param>_<desc>').
UNCERTAINTY_DESCS = ("sd", "ci95lo", "ci95hi", "contraction")


def split_map_name(name: str) -> tuple:
    """'fin_ci95lo' -> ('fin', 'ci95lo'); 'fin' -> ('fin', None)."""
    for desc in UNCERTAINTY_DESCS:
        if name.endswith("_" + desc):
            return name[:-len(desc) - 1], desc
    return name, None


def uncertainty_description(desc_entity: str, desc: str, unit: str, params: dict) -> tuple:
    """(Description, Units) of an uncertainty map of a parameter described by desc (unit)."""
    if desc_entity == "sd":
        kind = "posterior" if "posterior" in str(params.get("Uncertainty", "")) else "Fisher/Laplace, at the estimate"
        return f"standard deviation ({kind}) of: {desc}", unit
    if desc_entity in ("ci95lo", "ci95hi"):
        end = "lower" if desc_entity == "ci95lo" else "upper"
        return f"{end} end of the 95 % credible interval of: {desc}", unit
    return (f"posterior contraction 1 - var_post/var_prior on the estimator's scale (0: not informed by the data, 1: "
            f"determined; IdentifiabilityDefinition) of: {desc}", "")
