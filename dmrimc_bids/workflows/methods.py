"""The methods text carried by the workflows that run, niworkflows style: each builder makes a
``LiterateWorkflow`` with the sentences of the step it builds (``__desc__``, and ``__postdesc__`` for closing
ones); ``visit_desc`` collects them over a session's graph in the order the steps run, and the session report
quotes them, so the text cannot drift from the graph. The models' own sentences (Model.describe(), with the
dictionary they were fitted against) are added by the report from the models that wrote maps.

Why not niworkflows' own LiterateWorkflow: it is the same ~30 lines (a Workflow subclass whose visit_desc walks
the graph topologically), and niworkflows would bring nilearn, nitransforms, templateflow's data, pandas,
seaborn and svgutils into an image that uses none of them. The class below keeps its interface (``__desc__``,
``__postdesc__``, ``visit_desc()``), so moving to niworkflows is a change of import.
"""

from __future__ import annotations

from nipype.pipeline import engine as pe

from .. import __version__
from .config import Config


class LiterateWorkflow(pe.Workflow):
    """A Nipype Workflow carrying its step's methods sentences (niworkflows.engine.workflows' interface)."""

    def __init__(self, name: str, base_dir=None, desc: str | None = None, postdesc: str | None = None):
        super().__init__(name, base_dir=base_dir)
        self.__desc__ = desc
        self.__postdesc__ = postdesc

    def visit_desc(self) -> dict:
        """{"desc": [...], "postdesc": [...]}: the ``__desc__`` of this workflow and of every sub-workflow, in
        the order the steps run (topological), each once, and their ``__postdesc__`` (innermost first)."""
        import networkx as nx

        desc, post = [], []

        def visit(w):
            text = getattr(w, "__desc__", None)
            if text and text not in desc:
                desc.append(text)
            for node in nx.topological_sort(w._graph):   # as niworkflows does: Nipype has no public walk
                if isinstance(node, pe.Workflow):
                    visit(node)
            text = getattr(w, "__postdesc__", None)
            if text and text not in post:
                post.append(text)

        visit(self)
        return {"desc": desc, "postdesc": post}


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def preproc_desc(config: Config) -> str:
    """The reading, directional averaging and b=0 normalisation (init_dwi_preproc_wf)."""
    return (f"Diffusion MRI maps were computed with dmrimc-bids {__version__} [bids, pybids, nipype, numba]. "
            "Each subject's DWI series were read with their per-volume timing (b, δ, Δ, TE); volumes were "
            "averaged over directions within each (b, δ, Δ, TE) shell and normalised by the mean b=0 signal "
            f"(b ≤ {_fmt(config.preprocessing.b0_threshold)} s/mm²) "
            + ("of their echo time (the b=0 volumes of all series at that echo time pooled after matching each "
               "series' global scale)." if not config.preprocessing.b0_per_series else
               "of their series and echo-time/diffusion-time group."))


def joint_desc() -> str:
    """The joint tissue + vascular fit (init_joint_wf)."""
    return ("Tissue and vasculature were fitted jointly (--model joint): one posterior of (1 - fV) S_tissue + "
            "fV S_flow on every measurement with b > 0, tissue and flow dictionaries combined.")


def separate_desc() -> str:
    """The separate tissue and vascular branches (init_tissue_wf with --model separate)."""
    return ("Tissue and vasculature were fitted separately (--model separate): the tissue dictionary on the "
            "high-b measurements, the flow dictionary on the IVIM fit's vascular signal.")


def seed_postdesc(config: Config) -> str:
    """The closing sentence of a session's methods (init_single_subject_wf)."""
    return f"Random seed: {config.execution.seed}."
