"""Nipype interface around core.fitting.dictfit."""

from __future__ import annotations

import json

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


class _FitOut(TraitedSpec):
    maps = traits.Dict(traits.Str, File(exists=True), desc="map name -> NIfTI")
    units = traits.Dict(traits.Str, traits.Str)
    info = traits.Dict()


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
        return runtime
