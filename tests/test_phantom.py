"""The demo phantom (core/phantom.py): a continuously varying truth, from substrates and configurations the
default dictionary does not hold."""

import numpy as np

from dmrimc_bids.core import phantom
from dmrimc_bids.core.dictionary_default import DEFAULT_DESIGN, default_substrate_specs


def test_demo_truth_has_many_levels_per_session():
    with np.load(phantom.tissue_library_path()) as z:
        truth = z["truth"]
    assert truth.shape[:2] == (phantom.N_DEMO_SUBSTRATES, phantom.DEMO_CONFIGS_PER_SUBSTRATE)
    for shift in (0.0, 0.05, 0.1):  # the three demo series
        mask, substrate, config = phantom.phantom_labels(phantom.SHAPE, shift)
        t = truth[substrate[mask], config[mask]]
        assert np.unique(t[:, 0]).size >= 20 and np.unique(t[:, 1]).size >= 20  # fin, vCS levels
        assert np.ptp(t[:, 0]) > 0.5 and np.ptp(t[:, 1]) > 8.0  # fraction and size (µm) span a tumour's
        assert np.unique(t[:, 2:], axis=0).shape[0] >= 40  # (D0in, D0ex, κ) triples
        # fin follows depth (dense viable ring between a loose rim and a sparse core): not one level per ring
        assert np.unique(substrate[mask]).size >= 20


def test_demo_configurations_are_off_the_dictionary_grid():
    cfg = phantom.demo_configs().reshape(-1, 3)
    d0 = np.array(DEFAULT_DESIGN["d0"])
    d0ex_nodes = np.unique(np.outer(d0, [1.0] + list(DEFAULT_DESIGN["ratios"])))
    assert np.min(np.abs(cfg[:, 0, None] - d0[None])) >= 0.04 - 1e-9
    assert np.min(np.abs(cfg[:, 1, None] - d0ex_nodes[None])) >= 0.04 - 1e-9
    lo, hi = phantom.DEMO_KAPPA
    assert np.all((cfg[:, 2] >= lo) & (cfg[:, 2] <= hi)) and np.unique(np.round(cfg[:, 2], 3)).size == len(cfg)


def test_demo_substrates_come_from_another_generator_and_seeds():
    specs = phantom.demo_substrate_specs()
    dictionary_seeds = {s["tissue"]["seed"] for s in default_substrate_specs()}
    assert not {s["seed"] for s in specs} & dictionary_seeds
    sub = phantom.demo_substrate(specs[0])
    assert sub.source.endswith("ellipse_lattice")
    with np.load(phantom.tissue_library_path()) as z:
        meta = z["meta"].item() if z["meta"].shape == () else str(z["meta"])
    assert "ellipse_lattice" in meta
    # the shipped library is this code's: the truth is the substrates' own metrics and the configurations
    with np.load(phantom.tissue_library_path()) as z:
        assert np.isclose(z["truth"][0, 0, 0], sub.metrics("hull")["fin"])
        assert np.allclose(z["truth"][..., 2:], phantom.demo_configs())
