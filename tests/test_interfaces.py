"""The Nipype interfaces: thin (no numerics), documented traits, files as File traits."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
from nipype.interfaces.base import BaseInterface, BaseInterfaceInputSpec, File

PKG = Path(__file__).resolve().parents[1] / "dmrimc_bids"
MODULES = sorted(f.stem for f in (PKG / "interfaces").glob("*.py") if f.stem not in ("__init__", "io"))


def _interfaces():
    for name in MODULES:
        mod = importlib.import_module(f"dmrimc_bids.interfaces.{name}")
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, BaseInterface) and cls.__module__ == mod.__name__:
                yield cls


def _own_traits(spec_cls):
    base = set(BaseInterfaceInputSpec().trait_names()) if issubclass(spec_cls, BaseInterfaceInputSpec) else set()
    spec = spec_cls()
    return {n: spec.trait(n) for n in spec.trait_names() if n not in base and not n.startswith("trait_")}


@pytest.mark.parametrize("iface", list(_interfaces()), ids=lambda c: c.__name__)
def test_every_trait_documented_and_files_are_file_traits(iface):
    for spec in (iface.input_spec, iface.output_spec):
        for name, trait in _own_traits(spec).items():
            assert trait.desc, f"{iface.__name__}.{name}: no desc"
            if name.endswith(("_file", "_mask")) and not name.endswith("_files"):
                assert isinstance(trait.trait_type, File), f"{iface.__name__}.{name}: not a File trait"
                assert not trait.usedefault, f"{iface.__name__}.{name}: a default instead of Undefined"


def test_no_numerics_in_interfaces():
    """Interfaces read images, call core and write results: no numpy reductions, fits or masks of their own."""
    numeric = {"mean", "median", "std", "argsort", "argmax", "argmin", "argwhere", "percentile", "exp", "log",
               "linalg", "einsum", "polyfit", "nanmean"}
    found = []
    for f in (PKG / "interfaces").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "np" \
                    and node.attr in numeric:
                found.append(f"{f.name}:{node.lineno} np.{node.attr}")
    assert found == []


def test_no_function_over_60_lines_outside_numba_kernels():
    long = []
    for f in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef):
                jit = any("jit" in ast.unparse(d) for d in node.decorator_list)
                if not jit and node.end_lineno - node.lineno + 1 > 60:
                    long.append(f"{f.relative_to(PKG)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []


def test_no_private_imports_across_packages():
    """from ..x import _private only inside one package (core, interfaces, workflows, bids, reports, cli)."""
    bad = []
    for f in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        bad.append(f"{f.relative_to(PKG)}: from {'.' * node.level}{node.module} import {alias.name}")
    assert bad == []


def test_fit_interfaces_declare_typed_options():
    """The estimators' options are traits with a description (no untyped options dict): a wrong value is
    refused when the node is built, and each model is handed only its own options."""
    from traits.api import TraitError

    from dmrimc_bids.interfaces.fitting import MODEL_OPTIONS, FitModel, model_options

    spec = FitModel().inputs
    assert "options" not in spec.trait_names()
    for name in {n for names in MODEL_OPTIONS.values() for n in names}:
        assert spec.trait(name).desc, name
    with pytest.raises(TraitError):
        FitModel(device="cuda")
    with pytest.raises(TraitError):
        FitModel(bounds={"fin": [0.1]})
    node = FitModel(estimator="posterior", bounds={"fin": [0.1, 0.9]}, method="segmented", chunk_size=500)
    assert model_options(node.inputs, "posterior") == {"bounds": {"fin": (0.1, 0.9)}, "chunk_size": 500}
    assert model_options(node.inputs, "ivim") == {"method": "segmented"}


def test_stored_intervals_hold_the_computed_ones():
    """float32(0.8) > 0.8: a truth at the dictionary's bound fell outside a nearest-rounded lower end (every
    real-histology voxel with D0in = 0.8 read as not covered); interval ends are rounded outwards."""
    import numpy as np

    from dmrimc_bids.interfaces.fitting import as_float32
    vals = np.array([0.8, 0.1, 3.0, 1.35, 39.9])
    assert np.all(as_float32(vals, "D0in_ci95lo").astype(np.float64) <= vals)
    assert np.all(as_float32(vals, "D0in_ci95hi").astype(np.float64) >= vals)
    assert float(np.float32(0.8)) > 0.8 and np.array_equal(as_float32(vals, "D0in"), vals.astype(np.float32))
