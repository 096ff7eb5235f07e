"""Nipype workflows: the BIDS App's participant and group graphs, and init_dmrimc_wf for a lab's own pipeline."""


def init_dmrimc_wf(*args, **kwargs):
    """The app as a workflow for a lab's own files (workflows/embed.py; imported lazily: Nipype is heavy)."""
    from .embed import init_dmrimc_wf as build
    return build(*args, **kwargs)
