"""Nipype interface around core.dictionary: a selected dictionary matched to the measured protocol."""

from __future__ import annotations

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits

from ..core.dictionary import MATCH_TOL_B, MATCH_TOL_MS
from ..core.dictionary_default import load_selected
from ..core.protocol import B0_THRESHOLD, Protocol
from .io import cwd_path


class _SelectIn(BaseInterfaceInputSpec):
    dictionary_file = File(exists=True, desc="dictionary .npz (absent: the embedded default)")
    params = traits.List(traits.Str, desc="parameters to estimate (D0in, D0ex, kappa added unless fixed)")
    fix = traits.Dict(traits.Str, traits.Float, desc="parameters fixed at a grid value")


class _MatchIn(_SelectIn):
    protocol = File(exists=True, mandatory=True, desc="protocol table of the measurements to fit")
    tol_b = traits.Float(MATCH_TOL_B, usedefault=True, desc="matching tolerance in b [s/mm²]")
    tol_ms = traits.Float(MATCH_TOL_MS, usedefault=True, desc="matching tolerance in δ and Δ [ms]")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b at or below this is b=0 [s/mm²]")
    source = traits.Str("", usedefault=True, desc="input file named in error messages")


class _MatchOut(TraitedSpec):
    dictionary = File(exists=True, desc="dictionary on exactly the measured protocol (.npz + .json)")


class MatchDictionary(SimpleInterface):
    """Dictionary columns for the measured protocol, matched jointly on (b, δ, Δ)."""

    input_spec = _MatchIn
    output_spec = _MatchOut

    def _run_interface(self, runtime):
        d = load_selected(_file(self.inputs.dictionary_file), self.inputs.params, self.inputs.fix)
        m = d.match(Protocol.from_table(self.inputs.protocol), self.inputs.tol_b, self.inputs.tol_ms,
                    self.inputs.b0_threshold, self.inputs.source or None)
        self._results["dictionary"] = str(m.save(cwd_path(runtime, "matched_dictionary")))
        return runtime


def _file(value) -> str:
    return value if isdefined(value) else ""
