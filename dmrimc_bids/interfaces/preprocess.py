"""Nipype interfaces for the preparation steps, one per core function."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject, SimpleInterface,
                                    TraitedSpec, isdefined, traits)

from ..core import preprocess as core
from ..core.errors import EX_DATAERR, InputError
from ..bids.layout import DwiRun
from ..bids.protocol import session_protocols
from ..core.protocol import B0_THRESHOLD, Protocol
from ..bids.images import check_same_grid, load_data, load_image, prepare_mask
from .io import cwd_path, save_image


def _opt(value):
    return value if isdefined(value) and value not in ("", None) else None


class _ReadProtocolIn(BaseInterfaceInputSpec):
    dwi_files = InputMultiObject(File(exists=True), mandatory=True, desc="4D DWI series (one per run)")
    bval_files = InputMultiObject(File(exists=True), mandatory=True, desc="b-values [s/mm²], one file per series")
    bvec_files = InputMultiObject(traits.Either(File(exists=True), traits.Str("")),
                                  desc="bvec files, one per series ('' where a series has none)")
    sidecar_files = InputMultiObject(traits.Either(File(exists=True), traits.Str("")),
                                     desc="JSON sidecars with SmallDelta/BigDelta [s], one per series ('' for none)")
    gdur_files = InputMultiObject(traits.Either(File(exists=True), traits.Str("")),
                                  desc=".gdur files, δ [ms], one per series ('' for none)")
    gsep_files = InputMultiObject(traits.Either(File(exists=True), traits.Str("")),
                                  desc=".gsep files, Δ [ms], one per series ('' for none)")
    confounds_files = InputMultiObject(traits.Either(File(exists=True), traits.Str("")),
                                       desc="QSIPrep desc-confounds_timeseries.tsv (original_file), one per series")
    small_delta_ms = traits.Float(desc="δ for every volume [ms] (overrides files)")
    big_delta_ms = traits.Float(desc="Δ for every volume [ms] (overrides files)")
    timing = traits.Dict(traits.Str, traits.List(traits.Float), desc="per-run (δ, Δ) [ms] by run key (--timing)")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b at or below this is b=0 [s/mm²]")


class _ReadProtocolOut(TraitedSpec):
    dwi_file = File(exists=True, desc="the DWI, runs concatenated along volumes")
    protocol = File(exists=True, desc="per-volume protocol table (TSV)")


class ReadProtocol(SimpleInterface):
    """Per-volume protocol of a subject's DWI series (bids.protocol.session_protocols), runs concatenated."""

    input_spec = _ReadProtocolIn
    output_spec = _ReadProtocolOut

    def _run_interface(self, runtime):
        i = self.inputs
        n = len(i.dwi_files)
        column = lambda c: list(getattr(i, f"{c}_files")) if isdefined(getattr(i, f"{c}_files")) else [""] * n  # noqa: E731
        runs = [DwiRun(*row) for row in zip(*(column(c) for c in DwiRun.COLUMNS))]
        protos = session_protocols(runs, _opt(i.small_delta_ms), _opt(i.big_delta_ms),
                                   {k: tuple(v) for k, v in (i.timing if isdefined(i.timing) else {}).items()},
                                   i.b0_threshold)
        proto = Protocol.concatenate(protos)
        if n == 1:
            self._results["dwi_file"] = str(i.dwi_files[0])
        else:
            ref = load_image(i.dwi_files[0], "DWI")
            parts = []
            for f in i.dwi_files:
                img = load_image(f, "DWI")
                check_same_grid(img, ref, f, "DWI run", i.dwi_files[0])
                parts.append(np.asarray(img.dataobj, dtype=np.float32))
            self._results["dwi_file"] = save_image(np.concatenate(parts, axis=3), ref, cwd_path(runtime, "dwi.nii.gz"))
        self._results["protocol"] = cwd_path(runtime, "protocol.tsv")
        proto.to_table(self._results["protocol"])
        return runtime


class _PrepareMaskIn(BaseInterfaceInputSpec):
    dwi_file = File(exists=True, mandatory=True, desc="the session's DWI (the grid to check against)")
    protocol = File(exists=True, desc="per-volume protocol table (to build a mask from the b=0 when none is given)")
    mask_file = File(exists=True, desc="binary mask (absent: built from the mean b=0 intensity)")
    sigma_file = File(exists=True, desc="noise σ map to check against the DWI grid")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b at or below this is b=0 [s/mm²]")


class _PrepareMaskOut(TraitedSpec):
    mask_file = File(exists=True, desc="uint8 mask on the DWI grid")
    mask_origin = traits.Str(desc="how the mask was made (the given file, or built from the b=0)")


class PrepareMask(SimpleInterface):
    """Mask on the DWI grid (geometry and emptiness checked); built from the mean b=0 when none is given."""

    input_spec = _PrepareMaskIn
    output_spec = _PrepareMaskOut

    def _run_interface(self, runtime):
        i = self.inputs
        proto = Protocol.from_table(i.protocol) if isdefined(i.protocol) else None
        mask, ref, how = prepare_mask(i.dwi_file, _opt(i.mask_file), _opt(i.sigma_file), proto, i.b0_threshold)
        self._results["mask_file"] = save_image(mask, ref, cwd_path(runtime, "mask.nii.gz"), np.uint8)
        self._results["mask_origin"] = how
        return runtime


class _SphericalMeanIn(BaseInterfaceInputSpec):
    dwi_file = File(exists=True, mandatory=True, desc="4D DWI (runs concatenated)")
    protocol = File(exists=True, mandatory=True, desc="per-volume protocol table")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b at or below this is b=0 [s/mm²]")
    shell_tolerance = traits.Float(core.DEFAULT_SHELL_TOLERANCE, usedefault=True, desc="[s/mm²]")


class _SphericalMeanOut(TraitedSpec):
    out_file = File(exists=True, desc="directionally averaged signal, one volume per shell")
    shells = File(exists=True, desc="per-shell protocol table")


class SphericalMean(SimpleInterface):
    """Arithmetic mean over directions per (b, δ, Δ, TE) shell (core.preprocess.spherical_mean)."""

    input_spec = _SphericalMeanIn
    output_spec = _SphericalMeanOut

    def _run_interface(self, runtime):
        data, img = load_data(self.inputs.dwi_file, "DWI")
        out, shells, _ = core.spherical_mean(data, Protocol.from_table(self.inputs.protocol),
                                             self.inputs.b0_threshold, self.inputs.shell_tolerance)
        self._results["out_file"] = save_image(out, img, cwd_path(runtime, "sphmean.nii.gz"))
        self._results["shells"] = cwd_path(runtime, "shells.tsv")
        shells.to_table(self._results["shells"])
        return runtime


class _NormaliseIn(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="directionally averaged signal")
    shells = File(exists=True, mandatory=True, desc="per-shell protocol table")
    sigma_file = File(exists=True, desc="noise σ map (3D, signal units); absent: no σ")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b at or below this is b=0 [s/mm²]")
    pool_series = traits.Bool(True, usedefault=True, desc="pool the b=0 of series sharing a TE (scale-matched)")
    source = traits.Str("", usedefault=True, desc="input name for error messages")


class _NormaliseOut(TraitedSpec):
    out_file = File(exists=True, desc="b0-normalised signal")
    sigma_file = File(exists=True, desc="normalised σ, one volume per measurement (absent without a σ map)")
    notes = traits.List(traits.Str, desc="normalisation notes (pooled or borrowed b=0)")


class NormaliseB0(SimpleInterface):
    """Divide by each TE/diffusion-time group's mean b=0 (core.preprocess.normalise_b0), σ map too."""

    input_spec = _NormaliseIn
    output_spec = _NormaliseOut

    def _run_interface(self, runtime):
        data, img = load_data(self.inputs.in_file, "signal")
        sigma = None
        if isdefined(self.inputs.sigma_file):
            sigma, _ = load_data(self.inputs.sigma_file, "noise σ map")
            sigma = sigma.reshape(data.shape[:3])
        norm, sig, plan = core.normalise_b0(data, Protocol.from_table(self.inputs.shells), self.inputs.b0_threshold,
                                            sigma, self.inputs.source or None, self.inputs.pool_series)
        self._results["out_file"] = save_image(norm, img, cwd_path(runtime, "normalised.nii.gz"))
        if sig is not None:
            self._results["sigma_file"] = save_image(sig, img, cwd_path(runtime, "sigma.nii.gz"))
        self._results["notes"] = plan.notes
        return runtime


class _FilterIn(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="b0-normalised signal of every shell")
    sigma_file = File(exists=True, desc="its σ (absent without a σ map)")
    shells = File(exists=True, mandatory=True, desc="per-shell protocol table")
    vasc_threshold = traits.Float(250.0, usedefault=True, desc="drop non-zero b below this [s/mm²]")
    max_b = traits.Float(desc="dictionary's largest b [s/mm²]")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b at or below this is b=0 [s/mm²]")


class _FilterOut(TraitedSpec):
    out_file = File(exists=True, desc="signal of the kept measurements")
    sigma_file = File(exists=True, desc="their σ (absent without a σ map)")
    protocol = File(exists=True, desc="protocol of the kept measurements")
    dropped = traits.List(traits.Dict, desc="dropped measurements with reasons")


class VascularFilter(SimpleInterface):
    """Keep the measurements of the tissue fit (core.preprocess.vascular_filter)."""

    input_spec = _FilterIn
    output_spec = _FilterOut

    def _run_interface(self, runtime):
        shells = Protocol.from_table(self.inputs.shells)
        res = core.vascular_filter(shells, self.inputs.vasc_threshold, _opt(self.inputs.max_b),
                                   self.inputs.b0_threshold)
        if res.keep.size == 0:
            raise InputError("no measurement left for the tissue fit after the vascular/dictionary filter",
                             fix="acquire b between --vasc-threshold and the dictionary's largest b",
                             exit_code=EX_DATAERR)
        img = nib.load(self.inputs.in_file)
        data = np.asarray(img.dataobj, dtype=np.float32)[..., res.keep]
        self._results["out_file"] = save_image(data, img, cwd_path(runtime, "tissue.nii.gz"))
        if isdefined(self.inputs.sigma_file):
            s = np.asarray(nib.load(self.inputs.sigma_file).dataobj, dtype=np.float32)[..., res.keep]
            self._results["sigma_file"] = save_image(s, img, cwd_path(runtime, "tissue_sigma.nii.gz"))
        self._results["protocol"] = cwd_path(runtime, "tissue_protocol.tsv")
        shells.subset(res.keep).to_table(self._results["protocol"])
        self._results["dropped"] = json.loads(json.dumps(res.dropped))
        return runtime
