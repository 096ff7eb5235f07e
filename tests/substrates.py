"""Substrates drawn by hand for the tests (vertex arrays in µm, no SVG)."""

import numpy as np

from dmrimc_bids.core.simulate.substrate import Substrate, clean_cells


def from_polygons(polygons, tile_um, name: str = "substrate", **kwargs) -> Substrate:
    """A Substrate from vertex arrays [n, 2] in µm (core.simulate.substrate.clean_cells)."""
    return clean_cells(polygons, tile_um, name=name, **kwargs)


def regular_polygon(cx: float, cy: float, radius: float, n: int = 256) -> np.ndarray:
    """Vertices [n, 2] of a regular n-gon inscribed in a circle (µm); use radius·sqrt((2π/n)/sin(2π/n))
    to match the circle's area."""
    t = 2 * np.pi * np.arange(n) / n
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1)
