"""Gradient waveforms: b computed from the waveform equals the nominal b (PGSE, TRSE, sampled)."""

import math

import numpy as np
import pytest

from dmrimc_bids.core.errors import InputError
from dmrimc_bids.core.protocol import GAMMA_RAD_PER_S_PER_T, Protocol
from dmrimc_bids.core.waveforms import (pgse, protocol_waveforms, read_sampled, sampled, trse,
                                        unique_waveforms)


@pytest.mark.parametrize("sd,bd", [(10.0, 20.0), (4.0, 80.0), (25.0, 25.0), (3.9, 27.8)])
def test_pgse_b_from_waveform_equals_stejskal_tanner(sd, bd):
    w = pgse(sd, bd)
    g = 40.0  # mT/m
    nominal = (GAMMA_RAD_PER_S_PER_T * g * 1e-3 * sd * 1e-3) ** 2 * (bd - sd / 3) * 1e-3 * 1e-6
    assert w.b_value(g) == pytest.approx(nominal, rel=1e-12)
    assert w.amplitude_for_b(nominal) == pytest.approx(g, rel=1e-12)
    assert w.net_moment() == pytest.approx(0.0, abs=1e-12)


def test_sampled_pgse_has_the_pgse_b():
    dt = 0.01
    n = int(round(60 / dt))
    t = (np.arange(n) + 0.5) * dt
    g = np.where(t < 10, 1.0, 0.0) - np.where((t >= 30) & (t < 40), 1.0, 0.0)
    ws = sampled(g * 33.0, dt)
    assert ws.moment_integral() == pytest.approx(pgse(10, 30).moment_integral(), rel=1e-9)
    assert ws.duration_ms == pytest.approx(40.0)


def test_trse_published_timings_refocus_and_give_the_published_amplitudes():
    """SpinFlowSim TRSE protocols: G for b = 100 s/mm² is 10.21, 7.50, 5.50 mT/m (the SpinFlowSim
    paper, citations: spinflowsim)."""
    timings = [(8.9, 17.6, 20.4, 6.0, 17.4, 63.9), (13.2, 19.3, 24.8, 7.7, 21.7, 74.2),
               (18.9, 21.0, 30.5, 9.5, 27.5, 87.5)]
    for tm, g_pub in zip(timings, (10.21, 7.50, 5.50)):
        w = trse(*tm)
        assert abs(w.net_moment()) <= 0.1 + 1e-9  # δ1+δ2 = δ3+δ4 to ±0.1 ms
        assert w.amplitude_for_b(100.0) == pytest.approx(g_pub, rel=0.01)
        assert w.duration_ms == pytest.approx(tm[5] + tm[3])


def test_step_averages_keep_the_gradient_moment_and_b():
    w = pgse(4.3, 17.7)  # lobe edges off the step grid
    dt = 0.1
    n = int(math.ceil(w.duration_ms / dt))
    g = w.step_averages(dt, n)
    assert g.sum() * dt == pytest.approx(w.net_moment(), abs=1e-12)
    assert sampled(g, dt).moment_integral() * np.max(np.abs(g)) ** 2 == pytest.approx(w.moment_integral(), rel=2e-3)


def test_protocol_waveforms_and_sampled_file(tmp_path):
    prot = Protocol([0, 1000, 2000, 1000], [10, 10, 10, 5], [20, 20, 20, 30])
    waves, idx = unique_waveforms(protocol_waveforms(prot))
    assert len(waves) == 2 and idx.tolist() == [-1, 0, 0, 1]
    f = tmp_path / "wave.txt"
    np.savetxt(f, np.stack([np.arange(5) * 0.5, [0, 1, 1, -1, -1]], 1))
    w = read_sampled(f)
    assert w.net_moment() == pytest.approx(0.0) and w.kind == "sampled"
    unrefocused = tmp_path / "unrefocused.txt"
    np.savetxt(unrefocused, np.stack([np.arange(5) * 0.5, [0, 1, 1, -1, 0]], 1))
    with pytest.raises(InputError, match="does not refocus"):
        read_sampled(unrefocused)
    bad = tmp_path / "bad.txt"
    bad.write_text("0 1\n0.5 1\n2.0 -1\n")
    with pytest.raises(InputError, match="uniform"):
        read_sampled(bad)
    with pytest.raises(ValueError):
        pgse(10, 5)


def test_simulation_protocol_from_a_bids_sidecar_and_a_tsv(tmp_path):
    import json

    from dmrimc_bids.bids.protocol import read_simulation_protocol
    from dmrimc_bids.core.waveforms import protocol_from_json, protocol_to_json
    (tmp_path / "dwi.bval").write_text("0 1000 2000\n")
    (tmp_path / "dwi.json").write_text(json.dumps({"SmallDelta": 0.01, "BigDelta": [0.02, 0.02, 0.03]}))
    p = read_simulation_protocol(tmp_path / "dwi.json")
    assert p.b.tolist() == [0, 1000, 2000] and p.big_delta_ms.tolist() == [20, 20, 30]
    tsv = tmp_path / "p.tsv"
    np.savetxt(tmp_path / "osc.txt", np.stack([np.arange(4) * 2.0, [1, -1, -1, 1]], 1))
    tsv.write_text("b\tsmall_delta\tbig_delta\twaveform\tdelta1\tdelta2\tdelta3\tdelta4\tonset2\tonset4\n"
                   "0\t10\t20\tPGSE\n500\t10\t20\tPGSE\n"
                   "100\t0\t0\tTRSE\t8.9\t17.6\t20.4\t6.0\t17.4\t63.9\n300\t0\t0\tosc.txt\n")
    q = read_simulation_protocol(tsv)
    kinds = [None if w is None else w.kind for w in q.extra["waveforms"]]
    assert kinds == [None, "PGSE", "TRSE", "sampled"]
    r = protocol_from_json(json.loads(json.dumps(protocol_to_json(q))))
    assert [w and w.breaks_ms for w in r.extra["waveforms"]] == [w and w.breaks_ms for w in q.extra["waveforms"]]
    bad = tmp_path / "bad.tsv"
    bad.write_text("b\tsmall_delta\tbig_delta\twaveform\n100\t0\t0\tTRSE\n")
    with pytest.raises(InputError, match="TRSE"):
        read_simulation_protocol(bad)


def test_protocol_subset_keeps_the_waveforms_aligned():
    w = [None, pgse(10, 20), trse(8.9, 17.6, 20.4, 6.0, 17.4, 63.9)]
    p = Protocol([0, 1000, 100], 10, 20, extra={"waveforms": w})
    sub = p.subset([2, 1])
    assert [x.kind for x in protocol_waveforms(sub)] == ["TRSE", "PGSE"]
