"""bids/layout.py: a failing look-up of a DWI's companion files is reported, never swallowed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dmrimc_bids.bids.layout import _session_item
from dmrimc_bids.core.errors import InputError


class _Layout:
    """A pybids-like layout whose look-ups of the given kind fail as a broken index or unreadable file would."""

    def __init__(self, tmp, broken):
        self.tmp, self.broken = tmp, broken

    def get_bval(self, path):
        return str(self.tmp / "sub-01_dwi.bval")

    def get_bvec(self, path):
        if self.broken == "bvec":
            raise OSError("Permission denied: sub-01_dwi.bvec")
        return None

    def get_metadata(self, path):
        return {"EchoTime": 0.08}

    def get_nearest(self, path, **kwargs):
        if self.broken == "sidecar":
            raise OSError("Permission denied: dwi.json")
        return str(self.tmp / "dwi.json")


@pytest.mark.parametrize("broken, what", [("bvec", ".bvec"), ("sidecar", "JSON sidecar")])
def test_broken_lookup_names_the_file(tmp_path, broken, what):
    dwi = tmp_path / "sub-01_dwi.nii.gz"
    for f in (dwi, tmp_path / "sub-01_dwi.bval"):
        f.write_text("")
    files = [SimpleNamespace(path=str(dwi), entities={"subject": "01"})]
    with pytest.raises(InputError, match=f"could not look up .*{what}.*Permission denied") as e:
        _session_item("01", None, files, _Layout(tmp_path, broken))
    assert str(dwi) in str(e.value)


def test_missing_bvec_and_inherited_sidecar(tmp_path):
    """No .bvec anywhere: the file it should be is recorded (read_protocol refuses it where b > 0, naming it;
    a b = 0-only series needs none); the inherited sidecar is found through the layout."""
    dwi = tmp_path / "sub-01_dwi.nii.gz"
    for f in (dwi, tmp_path / "sub-01_dwi.bval"):
        f.write_text("")
    files = [SimpleNamespace(path=str(dwi), entities={"subject": "01"})]
    item = _session_item("01", None, files, _Layout(tmp_path, None))
    assert [r.bvec for r in item.runs] == [str(tmp_path / "sub-01_dwi.bvec")]
    assert [r.sidecar for r in item.runs] == [str(tmp_path / "dwi.json")]
