import json

import numpy as np
import pytest

from dmrimc_bids.core.dictionary import Dictionary, import_histousim
from dmrimc_bids.core.errors import InputError
from dmrimc_bids.core.protocol import Protocol

from .conftest import histo_loo_or_skip


def toy(rows=None):
    # 3 kappa x 2 fin x 2 D0in; protocol: b0 + (b, δ, Δ) in {1000, 2000} x {(10, 20), (20, 40)}
    prot = Protocol([0, 1000, 2000, 1000, 2000], [10, 10, 10, 20, 20], [20, 20, 20, 40, 40])
    grid = np.array([(k, f, d) for k in (0, 10, 20) for f in (0.3, 0.6) for d in (1.0, 2.0)], float)
    sig = np.exp(-np.outer(grid[:, 2] * (1 - grid[:, 1]), prot.b) * 1e-3 * (1 + prot.big_delta_ms / 100))
    return Dictionary(sig, np.column_stack([grid[:, 1], grid[:, 2], grid[:, 0]]), ["fin", "D0in", "kappa"], prot,
                      provenance={"source": "toy"})


def test_save_load_round_trip(tmp_path):
    d = toy()
    d.save(tmp_path / "dic")
    e = Dictionary.load(tmp_path / "dic.npz")
    assert np.array_equal(d.signals, e.signals) and np.array_equal(d.params, e.params)
    assert e.names == d.names and e.checksum() == d.checksum() and e.provenance["source"] == "toy"
    assert e.units["D0in"] == "um^2/ms"
    assert np.array_equal(e.protocol.big_delta_ms, d.protocol.big_delta_ms)


def test_reduced_storage_round_trip_and_error(tmp_path):
    """save(rank=r): signals of rank 3 plus noise of SD 1e-3 are stored as 3 components; load gives exactly the
    reconstruction (and its checksum), whose error is the noise (no component of the signal is lost), and the
    .json records the storage and its error; rank 1 loses signal and says so."""
    rng = np.random.default_rng(5)
    b = np.linspace(0, 3000, 40)
    prot = Protocol(b, np.full(40, 10.0), np.full(40, 30.0))
    k = 3000
    f, d1, d2 = rng.uniform(0.2, 0.8, k), rng.uniform(0.5, 1.0, k), rng.uniform(1.5, 3.0, k)
    basis = np.stack([np.exp(-b * 1e-3 * 0.5), np.exp(-b * 1e-3 * 1.5), np.exp(-b * 1e-3 * 3.0)])
    clean = np.stack([f * (1 - d1 / 2), (1 - f) * d2 / 3, 1 - f * (1 - d1 / 2) - (1 - f) * d2 / 3], 1) @ basis
    noisy = clean + rng.normal(0, 1e-3, clean.shape)
    d = Dictionary(noisy, np.column_stack([f, d1, d2]), ["fin", "D0in", "D0ex"], prot)
    d.save(tmp_path / "red", rank=3)
    e = Dictionary.load(tmp_path / "red.npz")
    np.testing.assert_array_equal(e.signals, d.signals)
    meta = json.loads((tmp_path / "red.json").read_text())
    assert meta["checksum"] == e.checksum() and meta["provenance"]["storage"]["rank"] == 3
    assert 0.8e-3 < meta["provenance"]["storage"]["rms_error"] < 1.2e-3       # the noise, nothing more
    assert np.sqrt(np.mean((e.signals - clean) ** 2)) < 3e-4                   # and most of it is gone
    with np.load(tmp_path / "red.npz") as z:
        assert "signals" not in z.files and z["signal_scores"].dtype == np.float16
    Dictionary(noisy, d.params, d.names, prot).save(tmp_path / "one", rank=1)
    assert json.loads((tmp_path / "one.json").read_text())["provenance"]["storage"]["rms_error"] > 5e-3


def test_a_dictionary_file_is_read_from_disk_once_per_version(tmp_path):
    """One read per process and file version: a second load shares the arrays (read-only), each load has its
    own metadata, selection makes new arrays, and a rewritten file is read again."""
    import os

    from dmrimc_bids.core.dictionary import _read_dictionary_files

    toy().save(tmp_path / "dic")
    before = _read_dictionary_files.cache_info().misses
    a, b = Dictionary.load(tmp_path / "dic.npz"), Dictionary.load(tmp_path / "dic.npz")
    assert _read_dictionary_files.cache_info().misses == before + 1
    assert a.signals is b.signals and not a.signals.flags.writeable
    a.provenance["file"] = "changed"
    assert "file" not in b.provenance
    s = a.select(["fin"], {"kappa": 10})
    assert s.signals.base is not a.signals and len(s) == 4 and len(a) == 12
    d = toy()
    d.signals = d.signals * 0.5
    d.save(tmp_path / "dic")
    st = (tmp_path / "dic.npz").stat()
    os.utime(tmp_path / "dic.npz", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    c = Dictionary.load(tmp_path / "dic.npz")
    assert _read_dictionary_files.cache_info().misses == before + 2
    np.testing.assert_allclose(c.signals, a.signals * 0.5, rtol=1e-6)


def test_select_keeps_always_kept_and_fix_drops_rows_and_column():
    d = toy()
    s = d.select(["fin"], {"kappa": 10})
    assert s.names == ["fin", "D0in"] and len(s) == 4
    assert np.allclose(s.signals, d.signals[d.params[:, 2] == 10])
    assert s.provenance["selection"]["fixed"] == {"kappa": 10.0}


def test_select_errors():
    d = toy()
    with pytest.raises(InputError, match="unknown parameter 'vCS'") as e:
        d.select(["vCS"])
    assert e.value.exit_code == 64 and "fin, D0in, kappa" in str(e.value)
    with pytest.raises(InputError, match="not on the dictionary's grid") as e:
        d.select(None, {"kappa": 5})
    assert "0, 10, 20" in str(e.value)


def test_match_is_joint_not_per_coordinate():
    d = toy()
    # measured (1000, δ=19, Δ=22): nearest δ alone is 20 and nearest Δ alone is 20, a combination
    # (δ=20, Δ=20) that does not exist; joint matching picks an existing (b, δ, Δ) or refuses.
    with pytest.raises(InputError, match="b=1000 s/mm², δ=19 ms, Δ=22 ms"):
        d.match(Protocol([1000], [19], [22]), tol_ms=2.5)
    m = d.match(Protocol([0, 1010, 1990, 990], [10, 10, 10, 19], [20, 20, 20, 39]))
    assert np.allclose(m.signals[:, 0], 1.0)
    assert np.array_equal(m.signals[:, 1:], d.signals[:, [1, 2, 3]])
    assert [r.get("dictionary", {}).get("column") for r in m.provenance["matching"]["measurements"][1:]] == [1, 2, 3]


def test_match_error_names_every_unmatched_volume():
    with pytest.raises(InputError) as e:
        toy().match(Protocol([1000, 5000, 1000], [10, 10, 30], [20, 20, 60]), source="sub-01_dwi.nii.gz")
    text = str(e.value)
    assert "b=5000" in text and "δ=30 ms, Δ=60 ms" in text and "sub-01_dwi.nii.gz" in text and "Fix:" in text


def test_import_split_arrays(tmp_path):
    d = toy()
    for name, values in (("bval", d.protocol.b), ("gdur", d.protocol.small_delta_ms), ("gsep", d.protocol.big_delta_ms)):
        (tmp_path / f"ref.{name}").write_text(" ".join(map(str, values)))
    np.save(tmp_path / "s1.npy", d.signals[:5]), np.save(tmp_path / "s2.npy", d.signals[5:])
    np.save(tmp_path / "p1.npy", d.params[:5]), np.save(tmp_path / "p2.npy", d.params[5:])
    e = import_histousim(tmp_path / "ref.bval", tmp_path / "ref.gdur", tmp_path / "ref.gsep",
                         [tmp_path / "s1.npy", tmp_path / "s2.npy"], [tmp_path / "p1.npy", tmp_path / "p2.npy"],
                         names=d.names)
    assert np.array_equal(e.signals, d.signals) and np.array_equal(e.params, d.params)
    with pytest.raises(InputError, match="signal array of shape"):
        import_histousim(tmp_path / "ref.bval", tmp_path / "ref.gdur", tmp_path / "ref.gsep",
                         [tmp_path / "p1.npy"], [tmp_path / "p1.npy"], names=d.names)


def test_published_loo_arrays_have_unit_b0(tmp_path):
    data = histo_loo_or_skip()
    b = np.array([0, 50, 100, 400, 900, 1200, 1500] * 3)
    (tmp_path / "ref.bval").write_text(" ".join(map(str, b)))
    (tmp_path / "ref.gdur").write_text(" ".join(["10"] * 21))
    (tmp_path / "ref.gsep").write_text(" ".join(["30"] * 21))
    d = import_histousim(tmp_path / "ref.bval", tmp_path / "ref.gdur", tmp_path / "ref.gsep",
                         [data / "all_signals_PGSEin_config14.npy"], [data / "all_params_PGSEin_config14.npy"])
    assert d.names == ["fin", "vCS_cyl", "D0in", "D0ex", "kappa"] and len(d) == 4050
    assert np.allclose(d.signals[:, b == 0], 1.0)
    assert np.array_equal(np.unique(d.params[:, 4]), np.arange(0, 41, 5))


def test_dictionary_cli_default_is_the_embedded_monte_carlo_one(tmp_path):
    """`dmrimc-bids-dictionary default` writes the dictionary the app uses, not the analytic test one."""
    from dmrimc_bids.cli.dictionary import main
    from dmrimc_bids.core.dictionary_default import default_dictionary

    assert main(["default", str(tmp_path / "d")]) == 0
    written, embedded = Dictionary.load(tmp_path / "d.npz"), default_dictionary()
    assert written.names == embedded.names and written.signals.shape == embedded.signals.shape
    assert np.array_equal(written.params, embedded.params)
    assert "analytic" not in json.dumps(written.provenance).lower()
    assert main(["analytic", str(tmp_path / "a")]) == 0
    assert "analytic" in json.dumps(Dictionary.load(tmp_path / "a.npz").provenance).lower()


def test_one_spelling_of_each_parameter():
    """vCS_cyl everywhere in the package (the published 'vCS' is mapped in one function), and one BIDS label."""
    import ast
    from pathlib import Path

    from dmrimc_bids.bids.derivatives import bids_label
    from dmrimc_bids.core.analytic import analytic_dictionary
    from dmrimc_bids.core.dictionary import HISTOUSIM_LOO_PARAM_NAMES, canonical_name

    pkg = Path(__file__).resolve().parents[1] / "dmrimc_bids"
    literals = [(f.name, node.lineno) for f in pkg.rglob("*.py") for node in ast.walk(ast.parse(f.read_text()))
                if isinstance(node, ast.Constant) and node.value == "vCS" and f.name != "dictionary.py"]
    assert literals == []
    assert "vCS_cyl" in analytic_dictionary().names and "vCS_cyl" in HISTOUSIM_LOO_PARAM_NAMES
    assert canonical_name("vCS") == "vCS_cyl" and canonical_name("fin") == "fin"
    assert bids_label("vCS_cyl") == "vCScyl"


def test_structure_ids_survive_selection_matching_and_io(tmp_path):
    """A flow dictionary's network ids (Dictionary.structure) follow its entries through select, within,
    measurements, match and save/load, and the posterior leaves whole networks out with them."""
    from dmrimc_bids.core.fitting.posterior import PosteriorModel
    from dmrimc_bids.core.simulate.flow.dictionary import network_ids
    from dmrimc_bids.core.simulate.flow.generate import default_realisations

    nets = default_realisations(n_planar=2, n_3d=1, n_pairs=2, n_flows=3)
    ids = network_ids(nets)
    assert ids.size == 18 and np.unique(ids).size == 3 and np.all(np.bincount(ids) == 6)
    prot = Protocol([25.0, 50, 100], 10.0, 30.0)
    rng = np.random.default_rng(0)
    params = np.stack([rng.uniform(1, 10, ids.size), rng.uniform(1, 5, ids.size)], 1)
    dic = Dictionary(rng.uniform(0.1, 1, (ids.size, 3)), params, ["vm", "anb"], prot, structure=ids)
    assert np.array_equal(dic.within({"vm": (0, 5)}).structure, ids[params[:, 0] <= 5])
    assert np.array_equal(dic.select(["vm"], {}).structure, ids)
    assert np.array_equal(dic.measurements([0, 2]).structure, ids)
    assert np.array_equal(dic.match(Protocol([0.0, 50, 100], 10.0, 30.0)).structure, ids)
    dic.save(tmp_path / "flow")
    again = Dictionary.load(tmp_path / "flow.npz")
    assert np.array_equal(again.structure, ids)
    model = PosteriorModel(again, noise="gaussian")
    assert np.array_equal(model.structure_of(np.arange(ids.size)), ids)   # not one realisation per structure
    with pytest.raises(ValueError, match="structure ids"):
        Dictionary(dic.signals, dic.params, dic.names, prot, structure=ids[:-1])


def test_cached_dictionary_is_built_once_by_concurrent_callers(tmp_path):
    """Two sessions asking for one simulated dictionary at once (parallel nodes): one builds it, the other
    waits and reads that file, so it is written once (a second write would change its bytes under the first
    session's cached content hash and make a rerun recompute the fits)."""
    import threading
    import time

    from dmrimc_bids.core.dictionary import cached_dictionary
    calls = []

    def build():
        calls.append(1)
        time.sleep(0.3)
        return toy()

    out = []
    threads = [threading.Thread(target=lambda: out.append(cached_dictionary(tmp_path, "toy", {"k": 1}, build)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(o[2] for o in out) == [False, True] and out[0][0] == out[1][0]
    mtime = out[0][0].stat().st_mtime_ns
    assert cached_dictionary(tmp_path, "toy", {"k": 1}, build)[2] and out[0][0].stat().st_mtime_ns == mtime


def test_principal_components_span_a_low_rank_dictionary_and_a_sample_estimates_them():
    """The one PCA (core.dictionary.principal_components): signals on a 2-D affine subspace are spanned by
    their first two directions (orthonormal), from all entries and from a sample of them."""
    from dmrimc_bids.core.dictionary import principal_components
    rng = np.random.default_rng(3)
    mean, span = rng.random(12), np.linalg.qr(rng.normal(size=(12, 2)))[0].T      # [2, 12] orthonormal
    signals = mean + rng.normal(size=(30000, 2)) @ (span * [[3.0], [1.0]])
    for max_entries in (None, 5000):
        mu, basis = principal_components(signals, 2, max_entries=max_entries)
        assert basis.shape == (2, 12) and np.allclose(basis @ basis.T, np.eye(2), atol=1e-12)
        residual = (signals - mu) - (signals - mu) @ basis.T @ basis
        assert np.abs(residual).max() < 1e-9
        assert abs(abs(basis[0] @ span[0]) - 1) < 1e-3   # the largest variance first (up to sampling)
    assert principal_components(signals, 40)[1].shape == (12, 12)   # at most M directions
