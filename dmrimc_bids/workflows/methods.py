"""The methods text carried by the workflows that run (niworkflows' ``__desc__``/``__postdesc__`` style).

Each workflow builder sets the sentences of the step it builds on the workflow it returns; workflow_methods
collects them over a session's graph, in the order the steps run, and the session report quotes them, so the
text cannot drift from the graph. The models' own sentences (Model.describe(), with the dictionary they were
fitted against) are added by the report from the models that wrote maps.
"""

from __future__ import annotations

from .. import __version__
from .config import Config


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


def workflow_methods(wf) -> dict:
    """{"desc": [...], "postdesc": [...]}: the ``__desc__`` of wf and of every sub-workflow, in the order
    the steps run (topological), each once, and their ``__postdesc__`` (innermost first)."""
    import networkx as nx

    desc, post = [], []

    def visit(w):
        text = getattr(w, "__desc__", None)
        if text and text not in desc:
            desc.append(text)
        for node in nx.topological_sort(w._graph):
            if hasattr(node, "_graph"):   # a sub-workflow
                visit(node)
        text = getattr(w, "__postdesc__", None)
        if text and text not in post:
            post.append(text)

    visit(wf)
    return {"desc": desc, "postdesc": post}
