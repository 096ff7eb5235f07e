"""`dmrimc-sim histo` and `dmrimc-bids --dictionary-source simulate` end to end (small, fast runs)."""

import json
import shutil

import numpy as np
import pytest

from dmrimc_bids.cli.sim import main as sim_main
from dmrimc_bids.core.dictionary import Dictionary
from dmrimc_bids.core.simulate.histo import PARAM_NAMES

CELLS_SVG = """<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 60">
  <circle cx="20" cy="20" r="12"/><circle cx="55" cy="25" r="15"/><ellipse cx="80" cy="45" rx="12" ry="8"/>
  <rect x="10" y="40" width="25" height="14"/>
</svg>"""


@pytest.fixture
def svg(tmp_path):
    p = tmp_path / "cells.svg"
    p.write_text(CELLS_SVG)
    return p


@pytest.fixture
def prot_tsv(tmp_path):
    p = tmp_path / "prot.tsv"
    p.write_text("b\tsmall_delta\tbig_delta\techo_time\twaveform\tdelta1\tdelta2\tdelta3\tdelta4\tonset2\tonset4\n"
                 "0\t10\t20\t50\tPGSE\n1000\t10\t20\t50\tPGSE\n2000\t10\t20\t50\tPGSE\n1500\t15\t30\t60\tPGSE\n"
                 "100\t0\t0\t100\tTRSE\t8.9\t17.6\t20.4\t6.0\t17.4\t63.9\n")
    return p


def sim(capsys, *args):
    try:
        code = sim_main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    return code, capsys.readouterr()


@pytest.mark.slow
def test_histo_cli_builds_a_dictionary_for_the_protocol(tmp_path, svg, prot_tsv, capsys):
    out = tmp_path / "out" / "dict.npz"
    args = ["histo", "--svg", svg, "--width-um", 50, "--protocol", prot_tsv, "--d0in", 1.0, 2.0, "--d0ex", 2.0,
            "--kappa", 0, 30, "--walkers", 300, "--seed", 3, "--out", out, "--plot", "--device", "cpu"]
    code, cap = sim(capsys, *args)
    assert code == 0, cap.err
    d = Dictionary.load(out)
    assert d.names == PARAM_NAMES and d.signals.shape == (4, 5)
    assert np.all(d.signals[:, 0] == 1) and np.all((d.signals > 0) & (d.signals <= 1))
    # rows: D0in x D0ex x kappa, the substrate's metrics on every row; signal falls with b
    assert d.params[:, PARAM_NAMES.index("kappa")].tolist() == [0, 30, 0, 30]
    assert d.params[:, PARAM_NAMES.index("D0in")].tolist() == [1, 1, 2, 2]
    assert np.ptp(d.params[:, PARAM_NAMES.index("fin")]) == 0
    assert np.all(d.signals[:, 2] < d.signals[:, 1])
    meta = json.loads(out.with_suffix(".json").read_text())
    prov = meta["provenance"]
    assert prov["seed"] == 3 and prov["n_walkers"] == 300 and prov["substrates"][0]["substrate"]["n_cells"] == 4
    assert prov["waveforms"][4]["kind"] == "TRSE" and prov["default_params"] == ["fin", "vCS_cyl"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    # deterministic for a seed, whatever the job split and the Nipype plugin
    out2 = tmp_path / "again.npz"
    code, cap = sim(capsys, *[out2 if a == out else a for a in args[:-3]], "--device", "cpu", "--nprocs", 2,
                    "--configs-per-job", 1)
    assert code == 0 and Dictionary.load(out2).checksum() == d.checksum()


@pytest.mark.parametrize("case,code,text", [
    ("no scale", 64, "--scale"),
    ("missing svg", 66, "SVG file not found"),
    ("bad protocol", 65, "columns b, small_delta, big_delta"),
    ("negative kappa", 64, "must be >= 0"),
    ("gpu without a gpu", 64, "no CUDA GPU"),
])
def test_histo_cli_bad_input_gives_one_line_and_no_output(tmp_path, svg, prot_tsv, capsys, case, code, text):
    out = tmp_path / "d.npz"
    args = ["histo", "--svg", svg, "--width-um", 50, "--protocol", prot_tsv, "--walkers", 10, "--out", out,
            "--device", "cpu", "--d0in", 1, "--d0ex", 1, "--kappa", 0]
    if case == "no scale":
        args.remove("--width-um"), args.remove(50)
    elif case == "missing svg":
        args[2] = tmp_path / "nope.svg"
    elif case == "bad protocol":
        bad = tmp_path / "bad.tsv"
        bad.write_text("bvalue\tdelta\n0\t1\n")
        args[args.index(prot_tsv)] = bad
    elif case == "negative kappa":
        args[-1] = "-5"
    elif case == "gpu without a gpu":
        args[args.index("cpu")] = "gpu"
    rc, cap = sim(capsys, *args)
    err = cap.err
    assert rc == code, err
    assert text in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_participant_simulates_its_own_dictionary_and_caches_it(tmp_path, single_demo, svg, capsys):
    from dmrimc_bids.cli.run import main
    out, work = tmp_path / "deriv", tmp_path / "work"
    args = [single_demo, out, "participant", "-w", work, "--dictionary-source", "simulate", "--substrate-svg", svg,
            "--substrate-width-um", 50, "--sim-walkers", 200, "--sim-d0", 1.0, 2.5, "--sim-kappa", 0, 30,
            "--params", "fin", "--device", "cpu"]
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    cache = list((work / "dictionary_cache").glob("histousim_*.npz"))
    assert len(cache) == 1
    d = Dictionary.load(cache[0])
    # simulated for exactly the fitted measurements: b >= 250 of both diffusion times, nothing else
    pairs = {(b, s, t) for b, s, t in zip(d.protocol.b, d.protocol.small_delta_ms, d.protocol.big_delta_ms)}
    assert {(p[1], p[2]) for p in pairs} == {(10.0, 25.0), (15.0, 45.0)} and min(p[0] for p in pairs) >= 250
    from dmrimc_bids.bids.derivatives import expanded_parameters
    prov = expanded_parameters(out / "sub-01/dwi/sub-01_space-dwi_model-histousim_param-fin_dwimap.json")[
        "Dictionary"]["Provenance"]
    assert "Monte Carlo" in prov["source"] and prov["cache_key"] in cache[0].name
    # a second subject folder with the same protocol reuses the cached dictionary
    mtime = cache[0].stat().st_mtime
    shutil.rmtree(out)
    shutil.rmtree(work / [p.name for p in work.iterdir() if p.name.startswith("dmrimc_bids_wf")][0])
    assert main([str(a) for a in args]) == 0
    assert cache[0].stat().st_mtime == mtime and len(list((work / "dictionary_cache").glob("histousim_*.npz"))) == 1
    assert len(list((work / "dictionary_cache").glob("spinflowsim_*.npz"))) == 1  # the flow dictionary, cached too


@pytest.mark.slow
def test_dmrimc_sim_flow_builds_a_dictionary(tmp_path, capsys):
    """`dmrimc-sim flow`: user network (JSON) x Qin values, PGSE + TRSE protocol, any job split, plot."""
    from dmrimc_bids.cli.sim import main as sim_main
    from dmrimc_bids.core.simulate.flow.generate import capillary_network
    net = capillary_network(3)
    (tmp_path / "net.json").write_text(json.dumps(net.to_json()))
    prot = tmp_path / "prot.tsv"
    prot.write_text("b\tsmall_delta\tbig_delta\twaveform\tdelta1\tdelta2\tdelta3\tdelta4\tonset2\tonset4\n"
                    "0\t10\t30\tPGSE\t\t\t\t\t\t\n50\t10\t30\tPGSE\t\t\t\t\t\t\n100\t10\t30\tPGSE\t\t\t\t\t\t\n"
                    "100\t0\t0\tTRSE\t8.9\t17.6\t20.4\t6.0\t17.4\t63.9\n")
    outs = []
    for k, extra in enumerate((["--realisations-per-job", "1", "--nprocs", "2", "--plot", "--published-anb"],
                               ["--published-anb"])):
        out = tmp_path / f"flow{k}.npz"
        code = sim_main(["flow", "--network", str(tmp_path / "net.json"), "--qin", "5e-4", "2e-3", "4e-3",
                         "--protocol", str(prot), "--spins", "500", "--out", str(out), *extra])
        assert code == 0, capsys.readouterr().err
        outs.append(Dictionary.load(out))
    a, b = outs
    np.testing.assert_array_equal(a.signals, b.signals)  # independent of the job split and the plugin
    assert len(a) == 3 and a.names[:3] == ["vm", "vs", "anb"] and "anb_published" in a.names
    vm = a.params[:, 0]
    np.testing.assert_allclose(vm / vm[0], [1, 4, 8], rtol=1e-9)  # velocities scale with Qin
    assert np.all(a.signals[:, 0] == 1) and np.all(a.signals[:, 2] <= a.signals[:, 1] + 0.02)
    assert (tmp_path / "flow0.png").stat().st_size > 10_000
    assert a.provenance["kind"] == "spinflowsim" and a.units["vm"] == "mm/s"


def test_dmrimc_sim_flow_bad_network_one_line(tmp_path, capsys):
    from dmrimc_bids.cli.sim import main as sim_main
    bad = tmp_path / "net.json"
    bad.write_text(json.dumps({"nodes": [[0, 0, 0, 0], [1, 10, 0, 0], [2, 50, 0, 0], [3, 60, 0, 0]],
                               "segments": [[0, 1, 3], [2, 3, 3]], "inlet": 0, "outlet": 3, "qin_mm3_per_s": 1e-3}))
    prot = tmp_path / "prot.tsv"
    prot.write_text("b\tsmall_delta\tbig_delta\n0\t10\t30\n50\t10\t30\n")
    code = sim_main(["flow", "--network", str(bad), "--protocol", str(prot), "--out", str(tmp_path / "x.npz")])
    err = capsys.readouterr().err
    assert code == 65 and "not connected" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.slow
def test_default_dictionary_cli_builds_a_grid_dictionary_and_resumes(tmp_path, capsys):
    """`dmrimc-sim default-dictionary` (two substrates, few walkers): the timing grid is recorded, any
    protocol inside it is matched by interpolation, and a rerun on the same work dir reuses every
    finished substrate job."""
    from dmrimc_bids.core.dictionary_default import DEFAULT_TIMING_GRID
    from dmrimc_bids.core.protocol import Protocol

    out, work = tmp_path / "dd.npz", tmp_path / "work"
    args = ("default-dictionary", "--substrates", 2, "--walkers", 200, "--out", out, "-w", work, "--device", "cpu")
    code, cap = sim(capsys, *args)
    assert code == 0, cap.err
    dic = Dictionary.load(out)
    assert dic.provenance["timing_grid"] == DEFAULT_TIMING_GRID.describe()
    assert len(dic.protocol) == DEFAULT_TIMING_GRID.size and dic.signals.dtype == np.float32
    kappa = dic.params[:, dic.names.index("kappa")]
    assert kappa.min() == 0 and 0 < np.unique(kappa)[1] < 5 and kappa.max() <= 40
    assert len(np.unique(dic.params[:, dic.names.index("fin")])) == 2
    m = dic.match(Protocol([0, 700, 1300], [12.0, 12.0, 17.0], [30.0, 30.0, 41.0]))
    assert m.provenance["matching"]["method"].startswith("interpolated")
    assert np.all(m.signals[:, 1] > m.signals[:, 2])  # more weighting, less signal
    jobs = sorted(work.rglob("result__simulate*.pklz"))  # one per MapNode iteration (substrate)
    stamps = [p.stat().st_mtime_ns for p in jobs]
    assert len(jobs) == 2
    code, cap = sim(capsys, *args)
    assert code == 0, cap.err
    assert [p.stat().st_mtime_ns for p in jobs] == stamps


@pytest.mark.slow
def test_default_dictionary_cli_builds_recipe_v2(tmp_path, capsys):
    """`dmrimc-sim default-dictionary --recipe v2` (one substrate, few walkers): v2's grid from b = 25 s/mm²,
    permeable entries above v1's κ = 40 µm/s up to 70, and the recipe in the provenance."""
    from dmrimc_bids.core.dictionary_default import RECIPES

    out = tmp_path / "v2.npz"
    code, cap = sim(capsys, "default-dictionary", "--recipe", "v2", "--substrates", 1, "--walkers", 100, "--out", out,
                    "-w", tmp_path / "work", "--device", "cpu")
    assert code == 0, cap.err
    dic = Dictionary.load(out)
    assert dic.provenance["recipe"] == "v2" and dic.provenance["timing_grid"] == RECIPES["v2"].timing_grid.describe()
    assert len(dic.protocol) == RECIPES["v2"].timing_grid.size and dic.protocol.b.min() == 25
    kappa = dic.params[:, dic.names.index("kappa")]
    assert 40 < kappa.max() <= 70
    low = dic.protocol.b == 25
    assert np.all(dic.signals[:, low] > 0.9) and np.all(dic.signals[:, low] <= 1.0 + 1e-3)   # b = 25: little decay
