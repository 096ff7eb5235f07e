"""Nipype interface around core.fitting.dictfit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from ..core.dictionary import Dictionary
from ..core.fitting.dictfit import DictionaryModel
from .io import cwd_path, load_data, save_image


class _FitIn(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="normalised signal on the dictionary's measurements")
    sigma_file = traits.Str("", usedefault=True, desc="normalised σ ('' for plain least squares)")
    mask_file = File(exists=True, mandatory=True)
    dictionary = File(exists=True, mandatory=True, desc="matched dictionary .npz")
    n_averages = traits.Float(1.0, usedefault=True, desc="N: the σ map refers to N-volume magnitude averages")
    reg_norm = traits.Enum(2, 1, usedefault=True, desc="regularisation norm (L1 or L2)")
    reg_weight = traits.Float(0.0, usedefault=True, desc="regularisation weight (0: none)")
    bounds = traits.Dict(traits.Str, traits.List(traits.Float), desc="{name: [lo, hi]} physical units")
    smoothing = traits.Float(1e-3, usedefault=True, desc="surrogate smoothing")
    surrogate = traits.Enum("local", "global", usedefault=True, desc="thin-plate-spline surrogate")
    n_neighbours = traits.Int(32, usedefault=True, desc="entries per local surrogate model")
    noise_model = traits.Enum("gaussian", "rician", usedefault=True, desc="offset-Gaussian or Rician")
    device = traits.Enum("auto", "cpu", "gpu", usedefault=True, desc="auto: the GPU when one is present")
    n_threads = traits.Int(1, usedefault=True, desc="numba and BLAS threads")
    chunk_size = traits.Int(10000, usedefault=True, desc="voxels per batch (bounds memory)")
    estimator = traits.Enum("fit", "posterior", "posterior-mean", "posterior-median", usedefault=True,
                            desc="fit: grid search + LM on a surrogate; posterior (= posterior-mean): posterior mean "
                                 "over the entries; posterior-median: their posterior median")


class _FitOut(TraitedSpec):
    maps = traits.Dict(traits.Str, File(exists=True), desc="map name -> NIfTI")
    units = traits.Dict(traits.Str, traits.Str)
    info = traits.Dict()
    examples_file = File(exists=True, desc="measured and fitted signal of a few voxels (JSON, for the report)")


class FitDictionary(SimpleInterface):
    """Voxel-wise dictionary fit (core.fitting.dictfit.DictionaryModel)."""

    input_spec = _FitIn
    output_spec = _FitOut

    def _run_interface(self, runtime):
        import numba
        from threadpoolctl import threadpool_limits
        from tqdm import tqdm

        i = self.inputs
        data, img = load_data(i.in_file, "signal")
        mask = load_data(i.mask_file, "mask")[0] > 0
        sigma = load_data(i.sigma_file, "σ")[0] if i.sigma_file else None
        dic = Dictionary.load(i.dictionary)
        if i.estimator.startswith("posterior"):
            from ..core.fitting.posterior import PosteriorModel, posterior_chunk
            dic = dic.within({k: tuple(v) for k, v in (i.bounds or {}).items()})
            model = PosteriorModel(dic, chunk_size=posterior_chunk(i.chunk_size, len(dic)),
                                   point="median" if i.estimator == "posterior-median" else "mean")
        else:
            model = DictionaryModel(dic, i.n_averages, (i.reg_norm, i.reg_weight),
                                    {k: tuple(v) for k, v in (i.bounds or {}).items()}, i.smoothing,
                                    chunk_size=i.chunk_size, surrogate=i.surrogate, n_neighbours=i.n_neighbours,
                                    noise=i.noise_model, device=i.device)
        numba.set_num_threads(max(1, min(i.n_threads, numba.config.NUMBA_NUM_THREADS)))
        with threadpool_limits(limits=max(1, i.n_threads)), \
                tqdm(total=int(mask.sum()), desc="dictionary fit", unit="vox", mininterval=2) as bar:
            fit = model.fit(data, mask, sigma, progress=bar.update)
        maps = {}
        for name, arr in fit.maps().items():
            dtype = np.int16 if name == "exitcode" else np.float32
            maps[name] = save_image(arr, img, cwd_path(runtime, f"{name}.nii.gz"), dtype)
        self._results["maps"] = maps
        self._results["units"] = dict(fit.units)
        self._results["info"] = json.loads(json.dumps(fit.info))
        self._results["examples_file"] = write_examples(cwd_path(runtime, "examples.json"), model, dic, data,
                                                        sigma, fit)
        return runtime


def example_voxels(fobj, exitcode, n: int = 4) -> np.ndarray:
    """Indices [n, ndim] of up to n fitted voxels spanning the residual's range (its 10/50/90/100th
    percentiles), so the report shows a typical fit and the worst one."""
    ok = np.argwhere(exitcode == 1)
    if ok.size == 0:
        return ok
    order = ok[np.argsort(fobj[tuple(ok.T)], kind="stable")]
    picks = np.unique(np.round(np.array([0.1, 0.5, 0.9, 1.0])[:n] * (len(order) - 1)).astype(int))
    return order[picks]


def write_examples(path, model, dic, data, sigma, fit) -> str:
    """JSON with the protocol and, for example_voxels, the measured and model signal (S/S0)."""
    idx = example_voxels(fit.fobj, fit.exitcode)
    sel = tuple(idx.T)
    y = data[sel].astype(float)
    params = np.stack([fit.params[n][sel] for n in fit.names], axis=1) if len(idx) else np.zeros((0, 0))
    sig = None
    if sigma is not None and len(idx):
        sig = np.broadcast_to(sigma.reshape(data.shape[:-1] + (-1,)), data.shape)[sel].astype(float)
    fitted = model.predict(y, params, sig) if len(idx) else np.zeros((0, data.shape[-1]))
    out = {"protocol": dic.protocol.to_rows(),
           "voxels": [{"ijk": [int(v) for v in ijk], "measured": y[k].tolist(), "fitted": fitted[k].tolist(),
                       "fobj": float(fit.fobj[tuple(ijk)]),
                       "params": {n: float(params[k, j]) for j, n in enumerate(fit.names)}}
                      for k, ijk in enumerate(idx)]}
    Path(path).write_text(json.dumps(out, allow_nan=True))
    return str(Path(path).resolve())


class _IvimIn(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="b0-normalised, directionally averaged signal (all shells)")
    sigma_file = traits.Str("", usedefault=True, desc="normalised σ, one volume per shell ('' for none)")
    shells = File(exists=True, mandatory=True, desc="per-shell protocol table")
    mask_file = File(exists=True, mandatory=True)
    b_split = traits.Float(200.0, usedefault=True, desc="[s/mm²]")
    b_max = traits.Float(1000.0, usedefault=True, desc="largest b of the tissue segment [s/mm²]")
    b0_threshold = traits.Float(20.0, usedefault=True)
    min_fv = traits.Float(0.005, usedefault=True, desc="voxels with smaller fV get no vascular fit")


class _IvimOut(TraitedSpec):
    maps = traits.Dict(traits.Str, File(exists=True))
    units = traits.Dict(traits.Str, traits.Str)
    vascular_file = File(exists=True, desc="S_V/S_V(0) of the low-b measurements")
    vascular_sigma_file = traits.Str(desc="σ of it ('' without a noise map)")
    vascular_protocol = File(exists=True, desc="protocol table of the vascular measurements")
    vascular_mask = File(exists=True, desc="mask ∩ fV >= min_fv")
    notes = traits.List(traits.Str)
    reference_group = traits.Dict()


class FitIVIM(SimpleInterface):
    """Segmented IVIM per TE group (core.fitting.ivim.fit_ivim_protocol) and the vascular signal."""

    input_spec = _IvimIn
    output_spec = _IvimOut

    def _run_interface(self, runtime):
        from ..core.fitting.ivim import fit_ivim_protocol
        from ..core.protocol import Protocol

        i = self.inputs
        data, img = load_data(i.in_file, "signal")
        mask = load_data(i.mask_file, "mask")[0] > 0
        shells = Protocol.from_table(i.shells)
        vox = data[mask]
        res = fit_ivim_protocol(vox, shells, i.b_split, i.b_max, i.b0_threshold)
        shape = mask.shape
        maps, units = {}, {"fV": "", "D": "um^2/ms", "Dstar": "um^2/ms", "S0": ""}
        for name, val in res.maps.items():
            arr = np.full(shape, np.nan, np.float32)
            arr[mask] = val
            maps[name] = save_image(arr, img, cwd_path(runtime, f"{name}.nii.gz"))
        vas = np.full(shape + (res.vascular.shape[1],), np.nan, np.float32)
        vas[mask] = res.vascular
        self._results["vascular_file"] = save_image(vas, img, cwd_path(runtime, "vascular.nii.gz"))
        if i.sigma_file:
            sig = load_data(i.sigma_file, "σ")[0].reshape(shape + (-1,))
            vs = np.full(vas.shape, np.nan, np.float32)
            with np.errstate(invalid="ignore", divide="ignore"):
                vs[mask] = sig[mask][:, res.vascular_index] / res.vascular_scale
            self._results["vascular_sigma_file"] = save_image(vs, img, cwd_path(runtime, "vascular_sigma.nii.gz"))
        else:
            self._results["vascular_sigma_file"] = ""
        vmask = np.zeros(shape, np.uint8)
        good = (res.maps["fV"] >= i.min_fv) & np.all(np.isfinite(res.vascular), axis=1)
        vmask[mask] = good
        if not vmask.any():  # keep the graph running: one voxel, flagged by the fit as it is
            vmask[tuple(np.argwhere(mask)[0])] = 1
            res.notes.append(f"no voxel has fV >= {i.min_fv:g}: vascular maps are not meaningful")
        self._results["vascular_mask"] = save_image(vmask, img, cwd_path(runtime, "vascular_mask.nii.gz"), np.uint8)
        prot = shells.subset(res.vascular_index)
        self._results["vascular_protocol"] = cwd_path(runtime, "vascular.tsv")
        prot.to_table(self._results["vascular_protocol"])
        self._results["maps"] = maps
        self._results["units"] = units
        self._results["notes"] = list(res.notes)
        self._results["reference_group"] = json.loads(json.dumps(res.reference_group))
        return runtime
