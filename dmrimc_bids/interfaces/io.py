"""NIfTI / table helpers shared by the interfaces (nibabel lives here, never in core/)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from ..core.errors import EX_DATAERR, EX_NOINPUT, InputError


def load_image(path, what: str = "image"):
    """nibabel image with a clear error when the file cannot be read."""
    try:
        img = nib.load(str(path))
        img.header.get_data_shape()
        return img
    except FileNotFoundError as exc:
        raise InputError(f"{what} not found", path=path, fix="check the path", exit_code=EX_NOINPUT) from exc
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(f"cannot read the {what} ({type(exc).__name__}: {exc})", path=path,
                         fix="give a valid NIfTI file (.nii or .nii.gz)", exit_code=EX_NOINPUT) from exc


def verify_image(path, what: str = "image") -> None:
    """Read every byte of a NIfTI once: a gzip stream is decompressed to its end, so that its CRC and length
    are checked (nibabel alone reads only the bytes it needs and returns garbage from a damaged stream), and
    the data must be as long as the header says. A damaged file is an InputError naming it (exit 65)."""
    import gzip
    import zlib

    img = load_image(path, what)
    hdr = img.header
    need = int(hdr.get_data_offset()) + int(np.prod(hdr.get_data_shape())) * hdr.get_data_dtype().itemsize
    size = 0
    try:
        if str(path).endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                while block := fh.read(1 << 22):
                    size += len(block)
        else:
            size = os.path.getsize(path)
    except EOFError as exc:
        raise InputError(f"the {what} file is truncated ({exc})", path=path, exit_code=EX_DATAERR,
                         fix="copy or export the file again (its compressed stream ends early)") from exc
    except (OSError, zlib.error) as exc:
        raise InputError(f"the {what} file is damaged ({type(exc).__name__}: {exc})", path=path, exit_code=EX_DATAERR,
                         fix="copy or export the file again (its compressed data fail their checksum)") from exc
    if size < need:
        raise InputError(f"the {what} file is truncated ({size} of {need} bytes)", path=path, exit_code=EX_DATAERR,
                         fix="copy or export the file again (it ends before the data its header describes)")


def load_data(path, what: str = "image") -> tuple[np.ndarray, nib.Nifti1Image]:
    """(float32 data, image) with a clear error when the data cannot be read."""
    img = load_image(path, what)
    try:
        return np.asarray(img.dataobj, dtype=np.float32), img
    except Exception as exc:
        raise InputError(f"cannot read the {what} data ({exc})", path=path,
                         fix="the file may be truncated; re-export it", exit_code=EX_NOINPUT) from exc


def check_same_grid(img, ref, path, what: str, ref_path=None) -> None:
    """Raise InputError unless img has ref's 3D shape and affine (within 1e-3 mm)."""
    s, r = img.shape[:3], ref.shape[:3]
    if s != r or not np.allclose(img.affine, ref.affine, atol=1e-3):
        detail = f"shape {s} vs {r}" if s != r else "same shape but a different affine (voxel-to-world)"
        raise InputError(f"{what} geometry does not match the DWI {ref_path or ''} ({detail})", path=path,
                         fix=f"resample the {what} onto the DWI grid", exit_code=EX_DATAERR)


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
