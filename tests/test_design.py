"""Expected identifiability before acquisition (core/fitting/design.py, `dmrimc-sim design`)."""

import json

import numpy as np
import pytest

from dmrimc_bids.cli.sim import main as sim_main
from dmrimc_bids.core.dictionary import Dictionary
from dmrimc_bids.core.fitting.design import add_noise, expected_identifiability
from dmrimc_bids.core.protocol import Protocol

B = np.array([300.0, 600, 1000, 1500, 2000, 2500])


def dictionary_with_a_silent_parameter():
    """fin shapes the signal (two compartments); 'silent' (5 values crossed with fin) does not."""
    f, silent = np.meshgrid(np.linspace(0.1, 0.9, 81), np.linspace(0.0, 4.0, 5), indexing="ij")
    f, silent = f.ravel(), silent.ravel()
    sig = f[:, None] * np.exp(-0.5e-3 * B) + (1 - f[:, None]) * np.exp(-2.5e-3 * B)
    return Dictionary(sig, np.stack([f, silent], 1), ["fin", "silent"], Protocol(B, 10.0, 30.0))


def test_design_tells_an_informed_parameter_from_a_silent_one_and_grows_with_snr():
    dic = dictionary_with_a_silent_parameter()
    low = expected_identifiability(dic, 10, n_samples=300, seed=3)
    high = expected_identifiability(dic, 200, n_samples=300, seed=3)
    for res in (low, high):
        assert res["silent"]["contraction"] < 0.1 and abs(res["silent"]["rho"]) < 0.2
        assert res["silent"]["medae"] >= 0.8 * res["silent"]["medae_constant"]   # no better than a constant
    assert high["fin"]["contraction"] > 0.95 and high["fin"]["rho"] > 0.98
    assert high["fin"]["medae"] < 0.1 * high["fin"]["medae_constant"]
    assert low["fin"]["contraction"] < high["fin"]["contraction"] and low["fin"]["rho"] < high["fin"]["rho"]
    assert low["fin"]["width95"] > high["fin"]["width95"]
    assert 0.85 <= high["fin"]["coverage95"] <= 1.0 and 0.85 <= low["fin"]["coverage95"] <= 1.0


def test_rician_noise_has_the_floor_and_gaussian_noise_has_none():
    rng = np.random.default_rng(0)
    zero = np.zeros((20000, 1))
    assert add_noise(zero, 0.1, "offset-gaussian", rng).mean() == pytest.approx(0.1 * np.sqrt(np.pi / 2), rel=0.02)
    assert abs(add_noise(zero, 0.1, "gaussian", rng).mean()) < 0.003


def test_design_cli_prints_and_writes_the_figures(tmp_path, capsys):
    dic = dictionary_with_a_silent_parameter()
    dic_file = tmp_path / "toy.npz"
    dic.save(dic_file)
    prot = tmp_path / "prot.tsv"
    prot.write_text("b\tsmall_delta\tbig_delta\n0\t10\t30\n" + "".join(f"{b:g}\t10\t30\n" for b in B)
                    + "100\t10\t30\n")
    out = tmp_path / "design.json"
    code = sim_main(["design", "--protocol", str(prot), "--snr", "20", "100", "--dictionary", str(dic_file),
                     "--samples", "200", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "SNR 20" in text and "SNR 100" in text and "silent" in text
    res = json.loads(out.read_text())
    assert len(res["fitted_measurements"]) == B.size   # b=0 and b=100 (below the vascular threshold) left out
    assert res["by_snr"]["100"]["fin"]["rho"] > res["by_snr"]["20"]["fin"]["rho"] > 0.8
    # a protocol with no fitted measurement: one error line, exit non-zero
    bad = tmp_path / "bad.tsv"
    bad.write_text("b\tsmall_delta\tbig_delta\n0\t10\t30\n100\t10\t30\n")
    assert sim_main(["design", "--protocol", str(bad), "--snr", "20", "--dictionary", str(dic_file)]) != 0
    assert "no measurement of the protocol is fitted" in capsys.readouterr().err


def test_design_vascular_branch_evaluates_the_flow_dictionary(tmp_path, capsys):
    """Without --dictionary the vascular branch judges the flow dictionary the pipeline simulates for the
    protocol (every b > 0), leaving whole networks out; not the tissue dictionary."""
    prot = tmp_path / "ivim.tsv"
    prot.write_text("b\tsmall_delta\tbig_delta\n0\t10\t30\n" + "".join(f"{b:g}\t10\t30\n" for b in (10, 25, 50, 100, 200))
                    + "".join(f"{b:g}\t10\t60\n" for b in (25, 50, 100)))
    out = tmp_path / "design.json"
    code = sim_main(["design", "--protocol", str(prot), "--snr", "50", "--branch", "vascular", "--samples", "200",
                     "--flow-spins", "300", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert set(res["by_snr"]["50"]) == {"vm", "vs", "anb"}
    assert len(res["fitted_measurements"]) == 8   # every b > 0, b = 10 included
    assert list((tmp_path / "cache").glob("spinflowsim_*.npz"))
    assert res["by_snr"]["50"]["vm"]["rho"] > 0.3
