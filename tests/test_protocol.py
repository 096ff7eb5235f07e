import json

import numpy as np
import pytest

from dmrimc_bids.core.errors import InputError
from dmrimc_bids.bids.protocol import read_protocol, timing_from_sidecar
from dmrimc_bids.core.protocol import Protocol


def _bval(tmp_path, values):
    p = tmp_path / "dwi.bval"
    p.write_text(" ".join(map(str, values)))
    return p


def test_sidecar_seconds_become_ms_scalar_and_per_volume(tmp_path):
    sd, bd, te = timing_from_sidecar({"SmallDelta": 0.0125, "BigDelta": [0.03, 0.04, 0.05],
                                      "EchoTime": 0.08}, 3)
    assert np.allclose(sd, [12.5, 12.5, 12.5]) and np.allclose(bd, [30, 40, 50]) and np.allclose(te, 80)


def test_largedelta_alias():
    _, bd, _ = timing_from_sidecar({"SmallDelta": 0.01, "LargeDelta": 0.04}, 2)
    assert np.allclose(bd, 40)


def test_sidecar_values_in_ms_are_refused():
    with pytest.raises(InputError, match="looks like milliseconds") as e:
        timing_from_sidecar({"SmallDelta": 14.2, "BigDelta": 43.0}, 2, "x.json")
    assert "x.json" in str(e.value) and "0.0142" in str(e.value)


def test_read_protocol_from_gdur_gsep(tmp_path):
    b = _bval(tmp_path, [0, 1000, 2000])
    (tmp_path / "g.gdur").write_text("10 10 15")
    (tmp_path / "g.gsep").write_text("20\n20\n40\n")
    p = read_protocol(b, 3, gdur_path=tmp_path / "g.gdur", gsep_path=tmp_path / "g.gsep")
    assert np.allclose(p.small_delta_ms, [10, 10, 15]) and np.allclose(p.big_delta_ms, [20, 20, 40])


def test_cli_override_wins_over_sidecar(tmp_path):
    b = _bval(tmp_path, [0, 1000])
    p = read_protocol(b, 2, sidecar={"SmallDelta": 0.01, "BigDelta": 0.02}, small_delta_ms=12, big_delta_ms=30)
    assert np.allclose(p.small_delta_ms, 12) and np.allclose(p.big_delta_ms, 30)


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 4}, "3 b-values for 4 volumes"),
    ({"sidecar": {}}, "no gradient timing"),
    ({"sidecar": {"SmallDelta": 0.03, "BigDelta": 0.02}}, "Δ < δ"),
    ({"sidecar": {"SmallDelta": -0.01, "BigDelta": 0.02}}, "negative"),
    ({"sidecar": {"SmallDelta": [0.01, 0.01], "BigDelta": 0.02}}, "2 values for 3 volumes"),
    ({"small_delta_ms": 0.012, "big_delta_ms": 30}, "looks like seconds"),
])
def test_protocol_errors_name_file_and_fix(tmp_path, kwargs, message):
    b = _bval(tmp_path, [0, 1000, 2000])
    n = kwargs.pop("n", 3)
    side = kwargs.pop("sidecar", {"SmallDelta": 0.01, "BigDelta": 0.03})
    with pytest.raises(InputError) as e:
        read_protocol(b, n, sidecar=side, sidecar_path=tmp_path / "dwi.json", **kwargs)
    text = str(e.value)
    assert message in text and "Fix:" in text and "\n" not in text
    assert "dwi" in text or "--small-delta" in text


def test_b0_volumes_may_have_zero_timing(tmp_path):
    b = _bval(tmp_path, [0, 1000])
    (tmp_path / "g.gdur").write_text("0 10")
    (tmp_path / "g.gsep").write_text("0 30")
    p = read_protocol(b, 2, gdur_path=tmp_path / "g.gdur", gsep_path=tmp_path / "g.gsep")
    assert p.small_delta_ms[1] == 10


def test_table_round_trip(tmp_path):
    p = Protocol([0, 1000, 2000.5], [10, 10, 12.5], [20, 20, 40], [80, 80, np.nan], n_averaged=[2, 3, 3],
                 series=[0, 0, 1])
    p.to_table(tmp_path / "p.tsv")
    q = Protocol.from_table(tmp_path / "p.tsv")
    for name in ("b", "small_delta_ms", "big_delta_ms", "n_averaged", "series"):
        assert np.array_equal(getattr(p, name), getattr(q, name))
    assert np.isnan(q.echo_time_ms[2]) and q.echo_time_ms[0] == 80


def test_sidecar_json_errors(tmp_path):
    from dmrimc_bids.bids.protocol import load_sidecar
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="does not parse"):
        load_sidecar(bad)
    (tmp_path / "ok.json").write_text(json.dumps({"SmallDelta": 0.01}))
    assert load_sidecar(tmp_path / "ok.json")["SmallDelta"] == 0.01
