"""Every estimator by name: one call makes the Model a workflow node runs (core/fitting/model.py)."""

from __future__ import annotations

from ..dictionary import Dictionary
from .model import Model

#: Estimator names: 'ml' (alias 'fit': maximum likelihood, grid search + Levenberg-Marquardt on a surrogate,
#: the published method), 'posterior' (alias 'posterior-median') and 'posterior-mean' (posterior.py),
#: 'ivim' (IVIM of a protocol, ivim.py) and 'joint' (the joint tissue + vascular posterior, joint.py).
ESTIMATORS = ("ml", "fit", "posterior", "posterior-mean", "posterior-median", "ivim", "joint")


def model_kind(estimator: str) -> str:
    """The family whose options an estimator takes: 'posterior', 'ml', 'ivim' or 'joint'."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator {estimator!r} is not one of {ESTIMATORS}")
    if estimator in ("ivim", "joint"):
        return estimator
    return "posterior" if estimator.startswith("posterior") else "ml"


def build_model(estimator: str, dictionary: Dictionary | None = None, protocol=None,
                flow_dictionary: Dictionary | None = None, **options) -> Model:
    """The Model of ``estimator``. Dictionary estimators take the (matched) dictionary and the options of
    their class (DictionaryModel: n_averages, regularisation, bounds, smoothing, chunk_size, surrogate,
    n_neighbours, noise, device; PosteriorModel: bounds, noise, n_averages, model_error, device, chunk_size, the
    latter capped by the entries' memory, posterior_chunk); 'ivim' takes the shells' protocol and IvimModel's
    options; 'joint' the tissue dictionary, the flow dictionary on the same measurements and JointModel's."""
    kind = model_kind(estimator)
    if kind == "ivim":
        from .ivim import IvimModel
        return IvimModel(protocol, **options)
    if dictionary is None:
        raise ValueError(f"estimator {estimator!r} needs a dictionary")
    if kind == "joint":
        if flow_dictionary is None:
            raise ValueError("estimator 'joint' needs a flow dictionary on the tissue dictionary's measurements")
        from .joint import JointModel
        return JointModel(dictionary, flow_dictionary, **options)
    if kind == "posterior":
        from .posterior import PosteriorModel, posterior_chunk
        chunk = options.pop("chunk_size", 10000)
        model = PosteriorModel(dictionary, point="mean" if estimator == "posterior-mean" else "median", **options)
        model.chunk_size = posterior_chunk(chunk, len(model.dictionary))
        return model
    from .dictfit import DictionaryModel
    return DictionaryModel(dictionary, **options)
