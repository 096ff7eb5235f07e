"""Methods boilerplate and references: shown in the reports and written to ``logs/CITATION.md``."""

from __future__ import annotations

REFERENCES = {
    "beaumont2002": "Beaumont MA, Zhang W, Balding DJ. Approximate Bayesian computation in population genetics. "
                    "Genetics 2002; 162(4): 2025-2035. doi:10.1093/genetics/162.4.2025",
    "histousim": "Grigoriou A, et al. Histology-informed microstructural diffusion simulations for MRI cancer "
                 "characterisation — the Histo-μSim framework. Communications Biology 2025; 8: 1695. "
                 "doi:10.1038/s42003-025-09096-3",
    "spinflowsim": "Voronova A, Grigoriou A, et al., Grussu F. SpinFlowSim: a blood flow simulation framework for "
                   "histology-informed diffusion MRI microvasculature mapping in cancer. medRxiv 2024. "
                   "doi:10.1101/2024.07.15.24310335",
    "ivim": "Le Bihan D, et al. Separation of diffusion and perfusion in intravoxel incoherent motion MR "
            "imaging. Radiology 1988; 168(2): 497-505. doi:10.1148/radiology.168.2.3393671",
    "blinder": "Blinder P, et al. The cortical angiome: an interconnected vascular network with noncolumnar "
               "patterns of blood flow. Nature Neuroscience 2013; 16: 889-897. doi:10.1038/nn.3426",
    "nipype": "Gorgolewski K, et al. Nipype: a flexible, lightweight and extensible neuroimaging data processing "
              "framework in Python. Frontiers in Neuroinformatics 2011; 5: 13. doi:10.3389/fninf.2011.00013",
    "pybids": "Yarkoni T, et al. PyBIDS: Python tools for BIDS datasets. Journal of Open Source Software 2019; "
              "4(40): 1294. doi:10.21105/joss.01294",
    "bids": "Gorgolewski K, et al. The brain imaging data structure, a format for organizing and describing "
            "outputs of neuroimaging experiments. Scientific Data 2016; 3: 160044. doi:10.1038/sdata.2016.44",
    "numba": "Lam SK, Pitrou A, Seibert S. Numba: a LLVM-based Python JIT compiler. Proceedings of LLVM-HPC "
             "2015. doi:10.1145/2833157.2833162",
}


def _fmt(value, default="n/a"):
    return default if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _dictionary_phrase(d: dict | None, what: str) -> str:
    """'the embedded default dictionary of ...' or 'the dictionary FILE (...)' from Dictionary.summary()."""
    if not d:
        return f"a dictionary of {what}"
    size = f"{d['entries']} entries"
    if d.get("substrates"):
        size += f" from {d['substrates']} cell substrates"
    if d.get("networks"):
        size += f" from {d['networks']} capillary networks"
    if d.get("file"):
        return f"the dictionary {d['file']} ({size}; {d.get('source') or 'provenance not recorded'})"
    origin = d.get("origin") or "a dictionary"
    return f"{origin} of {what} ({size})" if origin.startswith(("the ", "a ")) else f"a dictionary of {what}, {origin} ({size})"


def _parameters_phrase(d: dict | None, default: list) -> str:
    estimated = list((d or {}).get("estimated") or default)
    fixed = (d or {}).get("fixed") or {}
    names = ", ".join(estimated[:-1]) + (" and " if len(estimated) > 1 else "") + estimated[-1] if estimated else ""
    text = f"estimating {names}"
    if fixed:
        text += " with " + ", ".join(f"{k} fixed at {_fmt(float(v))}" for k, v in fixed.items())
    return text


def pipeline_methods(fragments: list[dict]) -> dict:
    """{"desc": [...], "postdesc": [...]}: the sentences the sessions' workflows carried
    (workflows.methods.LiterateWorkflow.visit_desc), each once, in the sessions' order."""
    out = {"desc": [], "postdesc": []}
    for f in fragments:
        for key in out:
            out[key] += [t for t in (f.get("pipeline") or {}).get(key, []) if t not in out[key]]
    return out


def methods_paragraphs(descriptions: dict, options: dict, pipeline: dict | None = None) -> list[str]:
    """Plain-text paragraphs describing what was run: the sentences of the workflows that ran (pipeline:
    pipeline_methods of the session fragments), then, from descriptions {model label: FitModel's description
    (Model.describe() plus the dictionary's summary)} of the models that wrote maps, one paragraph per model
    quoting the pipeline's options (Config.report_options), then the workflows' closing sentences."""
    o = options
    out = list((pipeline or {}).get("desc", []))
    if "histousim" in descriptions:
        d = descriptions["histousim"]
        params = d.get("parameters") or {}
        if "JointModel" in params:   # the joint fit: every b > 0, nothing discarded
            how = f"the signals were fitted {d['method']}"
        else:
            fitted = params.get("FittedB") or []
            kept = f" (b {_fmt(fitted[0])}-{_fmt(fitted[1])} s/mm²)" if len(fitted) == 2 else ""
            how = (f"measurements with b < {_fmt(o.get('vasc_threshold'))} s/mm² were discarded to suppress vascular "
                   f"signal, and the remaining signals{kept} were fitted {d['method']}")
        out.append(f"Tissue microstructure was estimated with Histo-μSim [histousim]: {how}, against "
                   + _dictionary_phrase(d.get("dictionary"), "Monte Carlo diffusion signals simulated in cell substrates")
                   + f", {_parameters_phrase(d.get('dictionary'), ['fin', 'vCS_cyl', 'D0in', 'D0ex', 'kappa'])}.")
    if "ivim" in descriptions:
        params = descriptions["ivim"].get("parameters") or {}
        estimator = params.get("IvimEstimator") or o.get("ivim_estimator") or ""
        fitted = params.get("FittedB") or []
        span = (f"b {_fmt(fitted[0])}-{_fmt(fitted[1])} s/mm²" if len(fitted) == 2
                else f"b ≤ {_fmt(params.get('BMax', o.get('ivim_b_max')))} s/mm²")
        out.append("The vascular signal fraction fV and pseudo-diffusion coefficient D* were estimated "
                   f"{descriptions['ivim']['method']} [ivim]"
                   + (f" (IVIM estimator: {estimator}; {span})." if estimator else "."))
    if "spinflowsim" in descriptions:
        d = descriptions["spinflowsim"]
        joint = "JointModel" in (d.get("parameters") or {})
        what = "the vascular compartment was estimated" if joint else "S_V/S_V(0) was fitted"
        out.append("Capillary flow properties (mean blood velocity vm, its spread vs and the apparent network "
                   f"branching ANB) were estimated with SpinFlowSim [spinflowsim]: {what} "
                   f"{d['method']}, against "
                   + _dictionary_phrase(d.get("dictionary"), "vascular signals of spins advected through capillary "
                                                              "networks")
                   + f", {_parameters_phrase(d.get('dictionary'), ['vm', 'vs', 'anb'])}; the networks' flow obeys "
                     "Kirchhoff's laws with the modified Hagen-Poiseuille resistance of [blinder].")
    return out + list((pipeline or {}).get("postdesc", []))


def references(models) -> list[tuple[str, str]]:
    """[(key, reference)] cited by the methods of these models."""
    keys = ["bids", "pybids", "nipype", "numba"] + [m for m in ("histousim", "ivim", "spinflowsim") if m in models]
    if "spinflowsim" in models:
        keys.append("blinder")
    return [(k, REFERENCES[k]) for k in keys]


def methods_markdown(descriptions: dict, options: dict, pipeline: dict | None = None) -> str:
    """logs/CITATION.md text."""
    lines = ["# Methods (boilerplate)", "",
             "Works using these derivatives should describe the processing; this text may be copied.", ""]
    lines += [p + "\n" for p in methods_paragraphs(descriptions, options, pipeline)]
    lines += ["## References", ""] + [f"- [{k}] {ref}" for k, ref in references(descriptions)]
    return "\n".join(lines) + "\n"
