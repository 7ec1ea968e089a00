"""npe2 sample data: a colour fundus photograph and a brain MRI (volume and slice).

The files live in ``napari_cuts/sample_data`` (``sample_data/`` at the top of the
repository is the same folder); their licence notices are in its README.md.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"


def _read(name: str):
    from .io import read_image

    img = read_image(SAMPLE_DIR / name)
    return [(img.data, img.layer_kwargs(), "image")]


def fundus():
    """Colour fundus photograph, (512, 512, 3) uint8 (scikit-image's retina, CC0)."""
    return _read("fundus.png")


def mri_volume():
    """Brain MRI T1 volume (Z, Y, X) with its affine (MNI152 2009a template)."""
    return _read("mri_volume.nii.gz")


def mri_slice():
    """One axial slice (Y, X) of the MNI152 T1 template, affine kept."""
    return _read("mri_slice.nii.gz")
