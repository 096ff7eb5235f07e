"""A lab's own Nipype pipeline with dmrimc-bids inside it (docs/usage.md, "Inside your own Nipype pipeline").

    python docs/examples/lab_pipeline.py DEMO_BIDS OUT     # DEMO_BIDS from: dmrimc-bids-demo DEMO_BIDS
"""

import sys
from pathlib import Path

from nipype.interfaces.utility import Function
from nipype.pipeline import engine as pe

from dmrimc_bids.workflows import init_dmrimc_wf


def denoise(in_file):
    """The lab's own preprocessing (a stand-in: it copies the DWI)."""
    import shutil
    from pathlib import Path
    out = str(Path("dwi_denoised.nii.gz").absolute())
    shutil.copyfile(in_file, out)
    return out


def main(bids: Path, out: Path) -> int:
    dwi = bids / "sub-01" / "dwi"
    seg = bids / "derivatives" / "segmentation" / "sub-01" / "dwi"
    lab = pe.Workflow(name="lab_pipeline", base_dir=str(out / "work"))
    prep = pe.Node(Function(input_names=["in_file"], output_names=["out_file"], function=denoise), name="denoise")
    prep.inputs.in_file = str(dwi / "sub-01_dwi.nii.gz")
    dmrimc = init_dmrimc_wf(out / "derivatives", subject="01", seed=7)   # any option of the app's Config
    dmrimc.inputs.inputnode.bval_file = str(dwi / "sub-01_dwi.bval")
    dmrimc.inputs.inputnode.bvec_file = str(dwi / "sub-01_dwi.bvec")
    dmrimc.inputs.inputnode.json_file = str(dwi / "sub-01_dwi.json")   # SmallDelta, BigDelta, EchoTime (s)
    dmrimc.inputs.inputnode.mask_file = str(seg / "sub-01_desc-tumour_mask.nii.gz")   # optional
    dmrimc.inputs.inputnode.sigma_file = str(seg / "sub-01_desc-sigma_noise.nii.gz")  # optional
    lab.connect(prep, "out_file", dmrimc, "inputnode.dwi_file")
    lab.run(plugin="Linear")   # or MultiProc, SLURM ...: the lab's own choice
    print(f"maps and report in {out / 'derivatives'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).absolute(), Path(sys.argv[2]).absolute()))
