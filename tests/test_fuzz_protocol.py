"""Fuzz the sidecar / bval / protocol-table parsers: any input gives a Protocol or our clear InputError."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmrimc_bids.core.errors import InputError
from dmrimc_bids.bids.protocol import load_sidecar, read_protocol
from dmrimc_bids.core.protocol import Protocol

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
N_VOLUMES = 6

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6))
values = st.one_of(scalars, st.lists(scalars, max_size=8), st.lists(st.floats(0.001, 0.2), min_size=N_VOLUMES,
                                                                      max_size=N_VOLUMES),
                   st.dictionaries(st.text(max_size=3), scalars, max_size=2))
sidecars = st.dictionaries(st.sampled_from(["SmallDelta", "BigDelta", "LargeDelta", "EchoTime",
                                            "DiffusionWaveform", "GradientDuration", "Other"]), values, max_size=6)
bval_texts = st.one_of(
    st.lists(st.sampled_from([0, 0.0, 500, 1000, 2000.5, -5, 1e9]), min_size=0, max_size=9).map(
        lambda v: " ".join(f"{x:g}" for x in v)),
    st.text(max_size=30))


def _check(proto):
    assert isinstance(proto, Protocol) and len(proto) == N_VOLUMES
    assert np.all(np.isfinite(proto.b)) and np.all(proto.b >= 0)
    assert np.all(np.isfinite(proto.small_delta_ms)) and np.all(np.isfinite(proto.big_delta_ms))
    assert np.all(proto.small_delta_ms > 0) and np.all(proto.big_delta_ms >= proto.small_delta_ms)


@SETTINGS
@given(meta=sidecars, bvals=bval_texts)
def test_sidecar_and_bval_parser(meta, bvals):
    with tempfile.TemporaryDirectory() as d:
        bval = Path(d) / "x_dwi.bval"
        bval.write_text(bvals)
        try:
            proto = read_protocol(bval, N_VOLUMES, sidecar=meta, sidecar_path=Path(d) / "x_dwi.json")
        except InputError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
        _check(proto)


@SETTINGS
@given(text=st.one_of(st.text(max_size=60), st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
                      sidecars.map(json.dumps)))
def test_sidecar_file_loader(text):
    """A JSON object loads as exactly that dict; anything else is one InputError line naming the file."""
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "x_dwi.json"
        f.write_text(text, encoding="utf-8", errors="surrogateescape")
        try:
            expected = json.loads(f.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            expected = None
        if isinstance(expected, dict):
            assert load_sidecar(f) == expected
        else:
            with pytest.raises(InputError) as err:
                load_sidecar(f)
            assert "x_dwi.json" in str(err.value) and "\n" not in str(err.value)


def test_sidecar_file_loader_reads_a_real_sidecar(tmp_path):
    """The success path with a control: timing keys come back as written, a broken copy is refused."""
    meta = {"SmallDelta": 0.0143, "BigDelta": [0.025, 0.045], "EchoTime": 0.08}
    good = tmp_path / "sub-01_dwi.json"
    good.write_text(json.dumps(meta))
    assert load_sidecar(good) == meta
    bad = tmp_path / "sub-02_dwi.json"
    bad.write_text(json.dumps(meta)[:-1])
    with pytest.raises(InputError, match="does not parse"):
        load_sidecar(bad)


@SETTINGS
@given(rows=st.lists(st.lists(st.one_of(st.floats(allow_nan=True), st.text(max_size=4), st.integers()),
                              min_size=3, max_size=4), max_size=5),
       header=st.sampled_from(["b\tsmall_delta\tbig_delta", "b\tsmall_delta\tbig_delta\techo_time", "b\tdelta", ""]))
def test_protocol_table_reader(rows, header):
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "p.tsv"
        f.write_text(header + "\n" + "\n".join("\t".join(str(v) for v in r) for r in rows) + "\n")
        try:
            proto = Protocol.from_table(f)
        except InputError:
            return
        assert len(proto) == len(rows)


def test_the_fuzzed_parser_accepts_valid_input(tmp_path):
    """The fuzz tests must reach the success path too: a valid sidecar + bval parses to the right numbers."""
    bval = tmp_path / "x_dwi.bval"
    bval.write_text("0 500 1000 0 500 1000")
    meta = {"SmallDelta": 0.01, "BigDelta": [0.025] * 3 + [0.045] * 3, "EchoTime": 0.08}
    proto = read_protocol(bval, N_VOLUMES, sidecar=meta, sidecar_path=tmp_path / "x_dwi.json")
    _check(proto)
    assert proto.big_delta_ms.tolist() == [25.0] * 3 + [45.0] * 3 and np.all(proto.echo_time_ms == 80.0)
