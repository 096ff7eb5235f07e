"""The options table (dmrimc_bids/options.py) is the one declaration: the parser, the Config, the fitting
node's traits, the models' keywords, the sidecars' RunOptions and docs/usage.md all follow it."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from dmrimc_bids.options import BY_NAME, FIXED_MODEL_OPTIONS, OPTIONS, ROLES, markdown_table, result_names

ROOT = Path(__file__).resolve().parents[1]


def _parse(*extra):
    from dmrimc_bids.cli.parser import build_parser, config_from_args
    return config_from_args(build_parser().parse_args([str(ROOT), "/tmp/dmrimc-options-out", "participant", *extra]))


def test_every_flag_is_on_the_command_line_with_its_help_and_no_argparse_default():
    from dmrimc_bids.cli.parser import build_parser
    actions = {a.dest: a for a in build_parser()._actions}
    for o in OPTIONS:
        if not o.flags or not o.flag.startswith("-"):
            continue
        a = actions[o.name]
        assert tuple(a.option_strings) == o.flags and a.default is None, o.name
        assert o.help.replace("%", "%%") in a.help, o.name


def test_the_config_defaults_are_the_table_defaults_and_a_given_value_arrives():
    from dmrimc_bids.workflows.config import Config
    config = Config()
    for o in OPTIONS:
        assert config.get(o.name) == o.default, o.name
    given = _parse("--vasc-threshold", "300", "--b0-per-series", "--reg", "1", "0.5", "--estimator", "ml",
                   "--bounds", "kappa=0,30", "--seed", "7")
    assert given.preprocessing.vasc_threshold == 300 and given.preprocessing.b0_per_series is True
    assert given.tissue.regularisation == [1, 0.5] and given.tissue.bounds == {"kappa": [0.0, 30.0]}
    assert given.execution.seed == 7 and given.vascular.model == "separate"   # ml selects the separate branches
    assert given.tissue.point_prior == BY_NAME["point_prior"].default        # not given: the table's default


def test_the_config_is_frozen_sectioned_and_refuses_unknown_options():
    from dmrimc_bids.workflows.config import Config
    config = Config.from_dict(seed=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.execution.seed = 4
    other = config.replace(seed=4, model="separate")
    assert (config.execution.seed, other.execution.seed, other.vascular.model) == (3, 4, "separate")
    assert set(config.to_dict()) == {"run", "inputs", "preprocessing", "tissue", "vascular", "execution"}
    assert Config.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown option"):
        Config.from_dict(sead=3)


@pytest.mark.parametrize("branch,estimator,flow_estimator", [
    ("tissue", "posterior", "posterior-mean"), ("tissue", "ml", "posterior-mean"), ("joint", "posterior", "ml"),
    ("ivim", "posterior", "ml"), ("flow", "posterior", "posterior-mean"), ("flow", "posterior", "ml")])
def test_every_fed_option_is_a_keyword_of_the_model_it_feeds(branch, estimator, flow_estimator):
    """The keywords each branch hands to registry.build_model are parameters of that model's class, and the
    fitting node has a trait for each; a misspelt feed fails here, not in a run."""
    from dmrimc_bids.core.fitting.dictfit import DictionaryModel
    from dmrimc_bids.core.fitting.ivim import IvimModel
    from dmrimc_bids.core.fitting.joint import JointModel
    from dmrimc_bids.core.fitting.posterior import PosteriorModel
    from dmrimc_bids.interfaces.fitting import FitModel
    from dmrimc_bids.workflows.config import Config
    config = Config.from_dict(estimator=estimator, flow_estimator=flow_estimator, t2_tissue_ms=80.0, t2_blood_ms=150.0)
    role = config.model_role(branch)
    cls = {"posterior": PosteriorModel, "ml": DictionaryModel, "joint": JointModel, "ivim": IvimModel,
           "flow-posterior": PosteriorModel, "flow-ml": DictionaryModel}[role]
    options = config.model_options(branch)
    accepted = set(inspect.signature(cls.__init__).parameters) | {"chunk_size"}   # posterior: the registry's
    assert options and set(options) <= accepted, set(options) - accepted
    node = FitModel(estimator="ivim" if branch == "ivim" else "joint", **options)   # every keyword is a trait
    assert all(getattr(node.inputs, k) == v for k, v in options.items())
    fed = {o.feeds[role] for o in OPTIONS if role in o.feeds} | set(FIXED_MODEL_OPTIONS.get(role, {}))
    assert set(options) == fed - ({"t2_tissue_ms", "t2_blood_ms"} if role != "joint" else set())


def test_the_sidecars_run_options_follow_the_options_that_change_the_maps():
    from dmrimc_bids.workflows.config import Config
    base = Config()
    for name in result_names():
        assert name in base.result_options()
    assert base.replace(seed=1).options_fingerprint() != base.options_fingerprint()   # changes the maps
    assert base.replace(nprocs=4, chunk_size=50).options_fingerprint() == base.options_fingerprint()   # does not


def test_declared_bounds_and_ml_only_options_are_usage_errors():
    from dmrimc_bids.core.errors import InputError
    with pytest.raises(InputError, match="--nprocs 0.*give --nprocs >= 1"):
        _parse("--nprocs", "0")
    with pytest.raises(InputError, match="--max-failed-fraction 2.*<= 1"):
        _parse("--max-failed-fraction", "2")
    with pytest.raises(InputError, match="--surrogate.*only for --estimator ml"):
        _parse("--surrogate", "global")
    with pytest.raises(InputError, match="--reg 3 0"):
        _parse("--estimator", "ml", "--reg", "3", "0")


def test_the_docs_options_table_is_the_generated_one():
    text = (ROOT / "docs" / "usage.md").read_text()
    assert markdown_table() in text, "docs/usage.md is stale: python -m dmrimc_bids.options docs/usage.md"
    for o in OPTIONS:
        if o.flag.startswith("-"):
            assert f"`{o.flag}`" in markdown_table()


def test_roles_are_the_registry_families():
    from dmrimc_bids.core.fitting.registry import ESTIMATORS, model_kind
    assert {model_kind(e) for e in ESTIMATORS} | {f"flow-{k}" for k in ("posterior", "ml")} == set(ROLES)
