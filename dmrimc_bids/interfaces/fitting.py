"""One Nipype interface for every estimator, the joint fit included (core.fitting.registry.build_model): it reads
the images, runs ``Model.fit`` and writes the maps, the example voxels and the model's description. No numerics
here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, Undefined,
                                    isdefined, traits)

from ..core.fitting.registry import ESTIMATORS, model_kind
from ..options import FIXED_MODEL_OPTIONS, OPTIONS, model_keywords
from ..bids.images import load_data
from .io import cwd_path, save_image


def _model_trait(option, keyword: str):
    """The interface trait of a model keyword, from its option's declaration (options.py) and the values the
    pipeline fixes for it in some role (FIXED_MODEL_OPTIONS)."""
    fixed = {fixes[keyword] for fixes in FIXED_MODEL_OPTIONS.values() if isinstance(fixes.get(keyword), str)}
    desc = option.help
    if option.trait == "bounds":
        return traits.Dict(traits.Str, traits.List(traits.Float, minlen=2, maxlen=2), desc=desc)
    if option.trait == "point_prior":
        return traits.Dict(traits.Str, traits.Enum("design", "entries"), desc=desc)
    if option.trait == "regularisation":
        return traits.Tuple(traits.Int, traits.Float, desc=desc)
    if option.choices:
        return traits.Enum(*option.choices, *sorted(fixed - set(option.choices)), desc=desc)
    if option.type is int:
        return traits.Int(desc=desc)
    return traits.Float(desc=desc)


def _model_option_traits() -> dict:
    """{model keyword: trait} over every role; a keyword fed by several options takes the first's trait."""
    out: dict = {}
    for o in OPTIONS:
        for kw in o.feeds.values():
            out.setdefault(kw, _model_trait(o, kw))
    return out


#: The estimators' options as interface traits, generated from options.OPTIONS (their ``feeds``); an undefined
#: one keeps the model's default, and each model takes only its own (MODEL_OPTIONS).
_ModelOptions = type("_ModelOptions", (BaseInterfaceInputSpec,), _model_option_traits())

#: The options each model family takes: the keywords fed to its roles (the tissue and the flow fit of one
#: family share a FitModel kind) and their fixed ones.
MODEL_OPTIONS = {kind: tuple(dict.fromkeys([*model_keywords(kind), *model_keywords(f"flow-{kind}"),
                                            *FIXED_MODEL_OPTIONS.get(f"flow-{kind}", {})]))
                 for kind in ("posterior", "ml", "joint", "ivim")}


def model_options(inputs, model: str) -> dict:
    """The defined options of ``model`` (MODEL_OPTIONS) from a node's inputs, as the model's keyword arguments."""
    out = {k: getattr(inputs, k) for k in MODEL_OPTIONS[model] if isdefined(getattr(inputs, k))}
    if "bounds" in out:
        out["bounds"] = {k: tuple(v) for k, v in out["bounds"].items()}
    return out


class _FitIn(_ModelOptions):
    estimator = traits.Enum(*ESTIMATORS, mandatory=True, desc="the model to run (core.fitting.registry)")
    in_file = File(exists=True, mandatory=True, desc="normalised signal [..., M] on the model's measurements")
    sigma_file = File(exists=True, desc="normalised noise σ (absent: the model's no-σ behaviour)")
    mask_file = File(exists=True, mandatory=True, desc="voxels to fit (uint8)")
    session_mask_file = File(exists=True, desc="the session's mask, when mask_file leaves some of it out on purpose "
                                               "(no vascular signal): those voxels get exit code 2, parameters NaN")
    dictionary = File(exists=True, desc="matched dictionary .npz (dictionary estimators; joint: the tissue's)")
    flow_dictionary = File(exists=True, desc="joint: the flow dictionary on the same measurements")
    protocol = File(exists=True, desc="protocol table of the measurements (IVIM)")
    n_threads = traits.Int(1, usedefault=True, desc="numba and BLAS threads")
    label = traits.Str("fit", usedefault=True, desc="progress-bar label")


class _FitOut(TraitedSpec):
    maps = traits.Dict(traits.Str, File(exists=True), desc="map name -> NIfTI (empty when no voxel was fitted)")
    units = traits.Dict(traits.Str, traits.Str, desc="parameter -> unit")
    info = traits.Dict(desc="the fit's summary (counts, estimate placement, device)")
    description = traits.Dict(desc="Model.describe(): method sentence, sidecar parameters, references")
    examples_file = File(exists=True, desc="measured and model signal of a few voxels (JSON, for the report)")
    signal_file = File(exists=True, desc="signal the model hands on (IVIM: S_V/S_V(0) of the low-b measurements)")
    signal_sigma_file = File(exists=True, desc="its σ (absent without a noise map)")
    signal_mask = File(exists=True, desc="voxels where it is meaningful (uint8)")
    signal_protocol = File(exists=True, desc="its measurements' protocol table")
    notes = traits.List(traits.Str, desc="notes for the sidecars and the report")
    signal_reason = traits.Str(desc="why the handed-on signal has no voxel ('' when it has some)")
    flow_maps = traits.Dict(traits.Str, File(exists=True), desc="joint: vascular map name (vm, vs, anb, fV) -> NIfTI")
    flow_units = traits.Dict(traits.Str, traits.Str, desc="joint: vascular parameter -> unit")
    flow_info = traits.Dict(desc="joint: the vascular part's summary")
    flow_description = traits.Dict(desc="joint: the vascular maps' description (with the flow dictionary's summary)")


def _load_voxels(inputs) -> tuple:
    """(signal array, its image, mask bool, σ array or None) of a fitting node's in_file, mask_file and
    optional sigma_file."""
    data, img = load_data(inputs.in_file, "signal")
    mask = load_data(inputs.mask_file, "mask")[0] > 0
    sigma = load_data(inputs.sigma_file, "σ")[0] if isdefined(inputs.sigma_file) else None
    return data, img, mask, sigma


class FitModel(SimpleInterface):
    """Fit any estimator voxel by voxel (core.fitting.model: Model.fit -> Fit)."""

    input_spec = _FitIn
    output_spec = _FitOut

    def _run_interface(self, runtime):
        from ..core.dictionary import Dictionary
        from ..core.fitting.registry import build_model
        from ..core.protocol import Protocol

        i = self.inputs
        data, img, mask, sigma = _load_voxels(i)
        dic = Dictionary.load(i.dictionary) if isdefined(i.dictionary) else None
        flow = Dictionary.load(i.flow_dictionary) if isdefined(i.flow_dictionary) else None
        protocol = Protocol.from_table(i.protocol) if isdefined(i.protocol) else dic.protocol
        kind = model_kind(i.estimator)
        if kind == "joint" and sigma is not None and sigma.ndim == data.ndim:
            sigma = sigma.mean(-1)   # the joint fit's σ is one per voxel
        model = build_model(i.estimator, dic, protocol, flow_dictionary=flow, **model_options(i, kind))
        if kind == "joint":
            self._run_joint(runtime, model, data, img, mask, sigma, dic, flow)
            return runtime
        self._results["description"] = {**model.describe().to_dict(),
                                         "dictionary": dic.summary() if dic is not None else None}
        self._results["units"] = dict(getattr(dic, "units", None) or {})
        self._results["notes"], self._results["maps"] = [], {}
        if not mask.any():  # nothing to fit (e.g. no voxel with a vascular signal): no maps, say so
            self._results["info"] = {"n_fitted": 0, "skipped": "no voxel to fit"}
            self._results["examples_file"] = _write_json(cwd_path(runtime, "examples.json"),
                                                         {"protocol": protocol.to_rows(), "voxels": []})
            return runtime
        fit = run_fit(model, data, mask, sigma, i.n_threads, i.label)
        self._results["description"] = {**model.describe().to_dict(),   # after the fit: what ran (noise map, prior)
                                         "dictionary": dic.summary() if dic is not None else None}
        maps = fit.maps()
        if isdefined(i.session_mask_file):
            maps = mark_not_fitted(maps, load_data(i.session_mask_file, "mask")[0] > 0, mask)
        self._results["maps"] = save_maps(runtime, img, maps, mask)
        self._results["units"] = dict(fit.units)
        self._results["info"] = json.loads(json.dumps(fit.info))
        self._results["examples_file"] = _write_json(cwd_path(runtime, "examples.json"),
                                                     fit.examples(protocol.to_rows()))
        self._results["notes"] = list(getattr(fit, "notes", []))
        handed_on = getattr(fit, "flow_signal", None)   # IVIM: the vascular signal the flow fit takes
        if handed_on is not None:
            self._write_signal(runtime, img, handed_on, protocol)
        return runtime

    def _run_joint(self, runtime, model, data, img, mask, sigma, tissue, flow) -> None:
        """The joint fit's outputs: the tissue maps, the vascular maps (with P(vascular)) and both descriptions."""
        i = self.inputs
        fit = run_fit(model, data, mask, sigma, i.n_threads, i.label)
        self._results["description"] = {**model.describe().to_dict(), "dictionary": tissue.summary()}
        self._results["flow_description"] = {**model.describe_vascular().to_dict(), "dictionary": flow.summary()}
        self._results["maps"] = save_maps(runtime, img, fit.tissue.maps(), mask, "tissue_")
        vascular = {k: v for k, v in fit.vascular.maps().items() if k not in ("fobj", "loglik", "aic", "bic")}
        vascular["pvascular"] = fit.vascular.p_vascular
        self._results["flow_maps"] = save_maps(runtime, img, vascular, mask, "vascular_")
        self._results["units"], self._results["flow_units"] = dict(fit.tissue.units), dict(fit.vascular.units)
        self._results["info"] = json.loads(json.dumps(fit.tissue.info))
        self._results["flow_info"] = json.loads(json.dumps(fit.vascular.info))
        self._results["notes"] = []
        self._results["examples_file"] = _write_json(cwd_path(runtime, "examples.json"),
                                                     fit.examples(tissue.protocol.to_rows()))

    def _write_signal(self, runtime, img, sig, protocol) -> None:
        self._results["signal_file"] = save_image(sig.signal, img, cwd_path(runtime, "signal.nii.gz"))
        self._results["signal_sigma_file"] = (Undefined if sig.sigma is None else
                                              save_image(sig.sigma, img, cwd_path(runtime, "signal_sigma.nii.gz")))
        self._results["signal_mask"] = save_image(sig.mask, img, cwd_path(runtime, "signal_mask.nii.gz"), np.uint8)
        self._results["signal_reason"] = sig.reason
        self._results["signal_protocol"] = cwd_path(runtime, "signal_protocol.tsv")
        protocol.subset(sig.index).to_table(self._results["signal_protocol"])


def run_fit(model, data, mask, sigma, n_threads: int, label: str):
    """model.fit on n_threads numba threads and model.blas_threads(n_threads) BLAS threads with a progress bar
    (and the one-line notice when any kernel the model calls is compiled first)."""
    import numba
    from threadpoolctl import threadpool_limits

    from .progress import progress

    numba.set_num_threads(max(1, min(n_threads, numba.config.NUMBA_NUM_THREADS)))
    from ..core import jitcache
    notice = jitcache.compile_notice(None, "fitting", model.jit_kernels())
    if notice:
        print(f"dmrimc-bids: {label}: {notice}", file=sys.stderr, flush=True)
    with threadpool_limits(limits=max(1, model.blas_threads(n_threads))), progress(int(mask.sum()), label) as update:
        return model.fit(data, mask, sigma, progress=update)


def mark_not_fitted(maps: dict, session_mask, fitted_mask) -> dict:
    """maps with the session's voxels outside the fitted mask marked EXIT_NOT_FITTED (parameters NaN)."""
    from ..core.fitting.model import EXIT_NOT_FITTED
    left_out = np.asarray(session_mask, bool) & ~np.asarray(fitted_mask, bool)
    if not left_out.any():
        return maps
    out = {k: np.where(left_out, np.nan, np.asarray(v, float)) for k, v in maps.items() if k != "exitcode"}
    out["exitcode"] = np.where(left_out, EXIT_NOT_FITTED, maps["exitcode"])
    return out


def save_maps(runtime, img, maps: dict, mask, prefix: str = "") -> dict:
    """Every map as float32 NIfTI in the node's folder, NaN outside the fit (exit code 0, or outside the
    mask without one): {name: path}."""
    outside = (maps["exitcode"] == 0) if "exitcode" in maps else ~mask  # one background: NaN outside the fit
    return {name: save_image(np.where(outside, np.nan, as_float32(arr, name)), img,
                             cwd_path(runtime, f"{prefix}{name}.nii.gz"), np.float32)
            for name, arr in maps.items()}


def as_float32(values, name: str = "") -> np.ndarray:
    """A map as float32; the ends of a 95 % interval ('*_ci95lo', '*_ci95hi') rounded outwards, so that the
    stored interval holds the computed one (float32(0.8) is above 0.8: a truth at the dictionary's bound
    would fall outside a nearest-rounded interval)."""
    arr = np.asarray(values, np.float64)
    out = arr.astype(np.float32)
    direction = -np.inf if name.endswith("_ci95lo") else np.inf if name.endswith("_ci95hi") else None
    if direction is not None:
        wrong = (out > arr) if direction < 0 else (out < arr)
        out = np.where(wrong, np.nextafter(out, np.float32(direction)), out)
    return out


def _write_json(path, obj) -> str:
    Path(path).write_text(json.dumps(obj, allow_nan=True))
    return str(Path(path).resolve())
