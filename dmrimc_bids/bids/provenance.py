"""Input provenance: which DWI, mask and σ map files a session used, as BIDS URIs with SHA-256 checksums.

A BIDS URI is ``bids:<dataset>:<path within the dataset>``; each <dataset> is named in the derivatives'
``dataset_description.json`` ``DatasetLinks`` (``raw``: the input BIDS dataset; a ``--derivatives``
folder: its folder name). A file outside every linked dataset is recorded by its absolute path.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: Read size of the checksums [bytes].
_CHUNK = 1 << 20


def sha256(path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def bids_uri(path, links: dict) -> str:
    """``bids:<dataset>:<relative path>`` of ``path`` in the first linked dataset {name: root} holding it,
    else the absolute path."""
    p = Path(path).resolve()
    for name, root in sorted(links.items(), key=lambda kv: -len(str(kv[1]))):  # the innermost dataset first
        try:
            return f"bids:{name}:{p.relative_to(Path(root).resolve()).as_posix()}"
        except ValueError:
            continue
    return str(p)


def dataset_links(bids_dir, derivatives=()) -> dict:
    """{dataset name: root folder} of a run's inputs: ``raw`` (bids_dir) and each --derivatives folder, named
    as bids.layout.dataset_name names them."""
    from .layout import dataset_name
    links = {"raw": str(Path(bids_dir).resolve())}
    for d in derivatives or []:
        links[dataset_name(d, set(links))] = str(Path(d).resolve())
    return links


def input_record(item, links: dict) -> dict:
    """The sidecars' ``InputFiles``: each DWI run, the mask and the σ map with URI and SHA-256, and how
    the mask was chosen (item: bids.layout.SessionInputs)."""
    entry = lambda f: {"URI": bids_uri(f, links), "SHA256": sha256(f)}  # noqa: E731
    record = {"DWI": [entry(f) for f in item.dwi_files]}
    record["Mask"] = {**(entry(item.mask_file) if item.mask_file else {}), "Origin": item.mask_origin or "--mask"}
    record["NoiseMap"] = entry(item.sigma_file) if item.sigma_file else {
        "Origin": "none: the fit's own noise estimate (no desc-sigma map in the --derivatives folders, no --noise-map)"}
    return record


def sources(record: dict) -> list[str]:
    """The BIDS ``Sources`` of a map: the URIs of the DWI runs, the mask and the σ map it was fitted from."""
    out = [d["URI"] for d in record.get("DWI", [])]
    out += [record[k]["URI"] for k in ("Mask", "NoiseMap") if "URI" in record.get(k, {})]
    return out


#: Environment variables Apptainer (and Singularity before it) sets inside every container it runs.
APPTAINER_VARIABLES = ("APPTAINER_CONTAINER", "APPTAINER_NAME", "SINGULARITY_CONTAINER", "SINGULARITY_NAME")


def container_type(environ=None) -> str:
    """'apptainer' when Apptainer/Singularity runs us (its own variables: an image built from our Docker image
    keeps that image's DMRIMC_CONTAINER_TYPE=docker), else $DMRIMC_CONTAINER_TYPE (set by our Docker image),
    else '' (no container of ours)."""
    env = os.environ if environ is None else environ
    if any(env.get(v) for v in APPTAINER_VARIABLES):
        return "apptainer"
    return env.get("DMRIMC_CONTAINER_TYPE", "")
