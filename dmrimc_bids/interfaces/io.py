"""What the interfaces write: NIfTI maps in the node's folder (the readers and input checks: bids/images.py)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np


def save_image(data, ref_img, path, dtype=np.float32) -> str:
    """Write a NIfTI with ref_img's affine; returns the absolute path."""
    hdr = ref_img.header.copy()
    hdr.set_data_dtype(dtype)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), ref_img.affine, hdr)
    path = os.path.abspath(str(path))
    img.to_filename(path)
    return path


def cwd_path(runtime, name: str) -> str:
    return str(Path(runtime.cwd) / name)
