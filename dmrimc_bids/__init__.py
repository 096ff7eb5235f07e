"""dmrimc-bids: histology-informed diffusion MRI microstructure maps as a BIDS App."""

__version__ = "0.1.0"
