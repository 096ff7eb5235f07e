"""Reading the session's input images with one clear error per problem (nibabel lives here and in the
interfaces, never in core/): headers, data, a byte-for-byte integrity check, the grid of a mask or σ map
against the DWI, and the mask the fit uses."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from ..core import preprocess as core
from ..core.errors import EX_DATAERR, EX_NOINPUT, InputError
from ..core.protocol import B0_THRESHOLD


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


def prepare_mask(dwi_file, mask_file=None, sigma_file=None, protocol=None, b0_threshold=B0_THRESHOLD):
    """Check the mask (and σ map) against the DWI grid; return (boolean mask, DWI image, how the mask was
    made). Without a mask file and with the protocol, the mask is built from the mean b=0 intensity
    (core.preprocess.b0_mask); without either, it is the whole field of view."""
    ref = load_image(dwi_file, "DWI")
    how = f"file {mask_file}"
    if mask_file:
        m, img = load_data(mask_file, "mask")
        check_same_grid(img, ref, mask_file, "mask", dwi_file)
        m = m.reshape(m.shape[:3]) if m.ndim > 3 and all(s == 1 for s in m.shape[3:]) else m
        if m.ndim != 3:
            raise InputError(f"the mask is {m.ndim}D {m.shape}", path=mask_file, fix="give a 3D binary mask")
        mask = np.nan_to_num(m) > 0
        if not mask.any():
            raise InputError("the mask is empty (no voxel > 0)", path=mask_file,
                             fix="give a mask that covers the tissue to fit")
    elif protocol is not None:
        data, _ = load_data(dwi_file, "DWI")
        mask, cut = core.b0_mask(data, protocol.b, b0_threshold)
        how = (f"built from the mean b=0 intensity: {int(mask.sum())} of {mask.size} voxels above {cut:.4g} "
               f"({100 * core.B0_MASK_FRACTION:g} % of its 98th percentile)")
    else:
        mask, how = np.ones(ref.shape[:3], dtype=bool), "the whole field of view"
    if sigma_file:
        s, simg = load_data(sigma_file, "noise σ map")
        check_same_grid(simg, ref, sigma_file, "noise σ map", dwi_file)
    return mask, ref, how
