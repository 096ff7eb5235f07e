"""One Model/Fit protocol for every estimator (the shape of dipy's ``ReconstModel`` -> ``ReconstFit``,
batched over voxels instead of a per-voxel Python loop).

``Model(dictionary_or_protocol, **options).fit(data, mask=None, sigma=None) -> Fit``:

- data [..., M]: normalised signals on the model's measurements; mask [...] bool (default every voxel);
  sigma: the normalised noise σ, [...] or [..., M], or None;
- ``Fit`` (constructed by the model's fit with the model, the data and σ) holds one array per map in the
  data's spatial shape: ``params`` (physical units), ``sd`` (uncertainty of each estimated parameter),
  ``exitcode`` (1 fitted, 0 background, -1 failed), the diagnostics and ``info``; ``Fit.predict(index)`` gives
  the fitted signal of the voxels at ``index`` (the report's measured-vs-fitted panel) and ``Fit.examples()``
  picks and describes a few of them;
- ``Model.predict(params, protocol=None)``: the model's noise-free signal [V, M] at parameter values [V, P]
  (physical units, in ``Model.names`` order) on the model's measurements (another protocol where the model
  can evaluate one: IVIM);
- ``Model.describe()`` -> ``Description``: the method sentence of the methods text, its references
  and the sidecar's ``Model.Parameters``.

The maximum-likelihood dictionary fit (dictfit.DictionaryModel), the posterior estimator
(posterior.PosteriorModel), IVIM (ivim.IvimModel) and the joint tissue + vascular fit (joint.JointModel)
implement it; registry.build_model makes any of them by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Exit codes of a fit (published convention): 1 fitted, 0 background, -1 failed / invalid data.
EXIT_OK, EXIT_BACKGROUND, EXIT_FAILED = 1, 0, -1
#: Inside the session's mask but not fitted on purpose: nothing for the model there (the flow fit of a voxel
#: whose IVIM fV shows no vascular signal); its parameters are NaN.
EXIT_NOT_FITTED = 2


@dataclass
class Description:
    """What a model computes. method: a sentence fragment for the methods text ("... were estimated
    <method>"); parameters: the sidecar's Model.Parameters of the model's own options; references: keys
    of reports.citations.REFERENCES."""

    method: str
    parameters: dict
    references: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"method": self.method, "parameters": dict(self.parameters), "references": list(self.references)}


def voxel_table(data, mask, n_measurements: int, what: str) -> tuple:
    """(data as float64, voxel shape, flat [V, M] view, mask [shape] bool) of a model's input; ValueError when
    the measurements differ from the model's n_measurements (what: "a dictionary", ...) or the mask's shape
    from the data's."""
    data = np.asarray(data, dtype=np.float64)
    shape, m = data.shape[:-1], data.shape[-1]
    if m != n_measurements:
        raise ValueError(f"{m} measurements for {what} of {n_measurements}")
    mask = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != shape:
        raise ValueError(f"mask {mask.shape} does not match data {shape}")
    return data, shape, data.reshape(-1, m), mask


def fit_plan(flat: np.ndarray, mask: np.ndarray) -> tuple:
    """(in_mask [V], valid [V]: in the mask with finite data) of a voxel table; each model adds its σ rule."""
    in_mask = mask.ravel()
    return in_mask, in_mask & np.all(np.isfinite(flat), axis=1)


def voxel_chunks(todo: np.ndarray, chunk_size: int, progress=None):
    """The voxel indices ``todo`` in chunks of ``chunk_size``; progress(n_voxels) after each chunk is done."""
    for c0 in range(0, todo.size, chunk_size):
        idx = todo[c0:c0 + chunk_size]
        yield idx
        if progress is not None:
            progress(idx.size)


class Model:
    """Base class: subclasses set ``names`` and implement ``fit``, ``predict``, ``fitted_signal`` and
    ``describe``."""

    names: list

    def fit(self, data, mask=None, sigma=None, progress=None) -> "Fit":
        raise NotImplementedError

    def predict(self, params, protocol=None) -> np.ndarray:
        """Noise-free signal [V, M] at params [V, P] (physical units, ``names`` order) on the model's
        measurements, or on ``protocol`` where the model can evaluate another one."""
        raise NotImplementedError

    def fitted_signal(self, data, params, sigma=None) -> np.ndarray:
        """The fitted signal [V, M] of voxels data [V, M] whose estimates are params [V, P] (σ [V] or [V, M]
        or None), as the estimator sees it (the noise floor included; a posterior's mean signal)."""
        raise NotImplementedError

    def _own_measurements(self, protocol, own) -> None:
        """ValueError unless protocol is None or has the model's measurements (own: the model's Protocol)."""
        if protocol is None:
            return
        same = (len(protocol) == len(own) and np.allclose(protocol.b, own.b)
                and np.allclose(protocol.small_delta_ms, own.small_delta_ms, equal_nan=True)
                and np.allclose(protocol.big_delta_ms, own.big_delta_ms, equal_nan=True))
        if not same:
            raise ValueError(f"{type(self).__name__} predicts on its own {len(own)} measurements only: match its "
                             "dictionary to the other protocol first (Dictionary.match)")

    def describe(self) -> Description:
        raise NotImplementedError

    def blas_threads(self, n_threads: int) -> int:
        """BLAS threads for fit() beside n_threads numba threads: all of them, unless the model's parallel work is
        in numba kernels that run between small BLAS products (an idle OpenBLAS thread spins for a while after
        each call and takes a core from the kernel beside it)."""
        return n_threads

    def jit_kernels(self) -> list:
        """The numba kernels fit() calls from Python (compiled at their first call; jitcache says whether they
        are): only those, since a kernel called from another kernel is compiled into it and has no cache entry
        of its own, and a kernel fit() never calls would be announced as compiling on every run."""
        return []


@dataclass
class Fit:
    """Base class of the fits. Subclasses provide ``names``, ``units``, ``params``, ``sd``, ``exitcode``,
    ``info`` and ``diagnostics()``; each is constructed with the model that made it, the data it fitted
    (no copy) and their σ, so that ``predict`` and ``examples`` work."""

    model: "Model" = field(default=None, kw_only=True, repr=False, compare=False)
    data: np.ndarray = field(default=None, kw_only=True, repr=False, compare=False)
    sigma: np.ndarray = field(default=None, kw_only=True, repr=False, compare=False)

    def diagnostics(self) -> dict:
        """Maps other than the parameters and their SDs, in sidecar order (name -> array)."""
        return {"exitcode": self.exitcode}

    def uncertainty_maps(self) -> dict:
        """'<name>_ci95lo', '<name>_ci95hi', '<name>_contraction' maps where the estimator gives them."""
        return {}

    def maps(self) -> dict:
        """Every map by name: the parameters, '<name>_sd', the intervals and contraction, then the diagnostics."""
        out = dict(self.params)
        out.update({f"{k}_sd": v for k, v in self.sd.items()})
        out.update(self.uncertainty_maps())
        out.update(self.diagnostics())
        return out

    def voxel_sigma(self, index) -> np.ndarray | None:
        """σ [n, M] of the voxels at ``index`` (None without a noise map)."""
        if self.sigma is None:
            return None
        shape = self.data.shape
        return np.broadcast_to(np.asarray(self.sigma, float).reshape(shape[:-1] + (-1,)), shape)[index]

    def predict(self, index) -> np.ndarray:
        """Fitted signal [n, M] of the voxels at ``index`` (a tuple of index arrays into the map shape)."""
        params = np.stack([self.params[n][index] for n in self.names], axis=1)
        return self.model.fitted_signal(self.data[index].astype(float), params, self.voxel_sigma(index))

    def residual(self) -> np.ndarray:
        """Per-voxel misfit used to choose examples (the objective where the fit has one)."""
        return self.fobj

    def example_voxels(self, n: int = 4) -> np.ndarray:
        """Indices [n, ndim] of up to n fitted voxels spanning the misfit's range (its 10/50/90/100th
        percentiles), so the report shows a typical fit and the worst one."""
        ok = np.argwhere(self.exitcode == EXIT_OK)
        if ok.size == 0:
            return ok
        order = ok[np.argsort(self.residual()[tuple(ok.T)], kind="stable")]
        picks = np.unique(np.round(np.array([0.1, 0.5, 0.9, 1.0])[:n] * (len(order) - 1)).astype(int))
        return order[picks]

    def examples(self, protocol_rows: list, n: int = 4) -> dict:
        """JSON-ready measured and model signal of example_voxels (with the protocol's rows)."""
        idx = self.example_voxels(n)
        sel = tuple(idx.T)
        if not len(idx):
            return {"protocol": protocol_rows, "voxels": []}
        measured = self.data[sel].astype(float)
        fitted = self.predict(sel)
        misfit = self.residual()
        return {"protocol": protocol_rows, "units": {n: str(getattr(self, "units", {}).get(n, "")) for n in self.names},
                "voxels": [{"ijk": [int(v) for v in ijk], "measured": measured[k].tolist(),
                            "fitted": fitted[k].tolist(), "fobj": float(misfit[tuple(ijk)]),
                            "params": {name: float(self.params[name][tuple(ijk)]) for name in self.names}}
                           for k, ijk in enumerate(idx)]}


def b_range(b) -> list:
    """[smallest, largest] b [s/mm²] of the measurements a model fitted (the sidecars' FittedB)."""
    b = np.asarray(b, float)
    return [round(float(b.min()), 1), round(float(b.max()), 1)] if b.size else []
