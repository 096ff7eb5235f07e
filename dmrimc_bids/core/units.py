"""The one table of parameter units and descriptions (BIDS-style unit strings): the tissue's (Histo-μSim), the
capillary networks' (SpinFlowSim's metrics), IVIM's and the joint fit's. Units: diffusivity µm²/ms, permeability
µm/s, velocity mm/s, flow mm³/s, lengths µm."""

# the tissue parameters
PARAM_UNITS = {"fin": "", "mCS": "um", "varCS": "um^2", "skewCS": "", "vCS_sph": "um",
               "vCS_cyl": "um", "D0in": "um^2/ms", "D0ex": "um^2/ms", "kappa": "um/s", "cellularity": "1/mm^2"}
PARAM_DESCRIPTIONS = {
    "fin": "intra-cellular volume fraction (normalised)",
    "mCS": "mean cell size (diameter of the circle with the cell's area)",
    "varCS": "variance of cell size", "skewCS": "skewness of cell size",
    "vCS_sph": "volume-weighted cell size index, spherical geometry ((<CS^7>/<CS^3>)^(1/4))",
    "vCS_cyl": "volume-weighted cell size index, cylindrical geometry ((<CS^6>/<CS^2>)^(1/4))",
    "D0in": "intrinsic intra-cellular diffusivity", "D0ex": "intrinsic extra-cellular diffusivity",
    "kappa": "cell membrane permeability", "cellularity": "cells per mm² of the substrate"}

# the capillary networks' metrics (core/simulate/flow/metrics.py computes them)
METRIC_UNITS = {"vm": "mm/s", "vs": "mm/s", "qm": "mm^3/s", "qs": "mm^3/s", "rm": "um", "lm": "um",
                "npaths": "", "lmp": "um", "vw": "mm/s", "qw": "mm^3/s", "rw": "um", "anb": "", "anb_published": "",
                "qin": "mm^3/s"}
METRIC_DESCRIPTIONS = {
    "vm": "mean blood velocity over the network's segments", "vs": "SD of segment blood velocity",
    "qm": "mean segment flow", "qs": "SD of segment flow", "rm": "mean capillary radius",
    "lm": "mean segment length", "npaths": "number of inlet-outlet paths", "lmp": "mean inlet-outlet path length",
    "vw": "path-length-weighted mean velocity", "qw": "path-length-weighted mean flow",
    "rw": "path-length-weighted mean radius", "anb": "apparent network branching: segments a spin enters in 100 ms",
    "anb_published": "ANB by the published rule (changes of a time-stepped step vector; overstates anb 2-8x)",
    "qin": "input flow"}

# IVIM's maps and the joint fit's P(vascular)
IVIM_UNITS = {"fV": "", "D": "um^2/ms", "Dstar": "um^2/ms", "S0": ""}
PARAM_UNITS.update(METRIC_UNITS)
PARAM_DESCRIPTIONS.update(METRIC_DESCRIPTIONS)
PARAM_UNITS.update(IVIM_UNITS)
PARAM_DESCRIPTIONS.update({"fV": "vascular signal fraction",
                           "D": "IVIM tissue diffusion coefficient",
                           "Dstar": "IVIM pseudo-diffusion coefficient of the vascular signal",
                           "S0": "fitted signal at b = 0, relative to the mean measured b = 0 signal",
                           "pvascular": "posterior probability of a vascular signal (fV > 0) under the session's "
                                        "vascular prior; vm, vs and anb are posteriors given one"})
PARAM_UNITS["pvascular"] = ""
