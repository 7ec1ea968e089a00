"""Settings and small helpers of the CUTS dock widget (no widgets here).

:class:`Settings` is what the user chose; :class:`Source` is the chosen image layer
(a 2D image, a grey volume segmented as one object, or a stack of colour images
segmented one by one); :func:`click_mode` maps mouse modifiers to a prompt (positive or negative).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .. import pipeline
from ..errors import InputError, WeightsError

LEVELS_NAME = "CUTS levels"
MASK_NAME = "CUTS mask"
LABELS_NAME = "CUTS labels"
UNITS = ("steps", "epochs", "seconds", "minutes")
DEVICES = ("auto", "cpu", "cuda", "mps")
NO_IMAGE_HINT = ("Open an image to start (File > Open, or File > Open Sample > "
                 "CUTS segmentation).")


@dataclass
class Settings:
    """What the user chose in the widget."""

    #: training budget, in ``unit``; None: the default number of steps for the input
    #: (:mod:`napari_cuts.budget`), which the budget box shows
    budget: Optional[float] = None
    unit: str = "steps"           #: "steps", "epochs", "seconds" or "minutes"
    seed: int = 0
    device: str = "auto"          #: "auto", "cpu", "cuda" or "mps"
    phate_samples: int = 2000     #: pixels in the PHATE view
    phate_knn: int = 5
    #: start from the packaged generic weights of the input's kind and channel count
    #: (from scratch where none is packaged); False trains from scratch, as in the paper
    warm_start: bool = True

    def train_kwargs(self) -> dict:
        """``steps=`` / ``epochs=`` / ``seconds=`` and ``warm_start=`` for
        :func:`pipeline.get_encoder` and :func:`pipeline.train_volume_encoder`."""
        kw: dict = {"warm_start": bool(self.warm_start)}
        if self.budget is None:
            return kw
        if self.unit == "steps":
            kw["steps"] = max(1, int(round(self.budget)))
        elif self.unit == "epochs":
            kw["epochs"] = max(1, int(round(self.budget)))
        else:
            kw["seconds"] = float(self.budget) * (60.0 if self.unit == "minutes" else 1.0)
        return kw


def default_budget(src: "Source", images: list, warm_start: bool) -> int:
    """The steps that training with no budget will take on ``src`` (``images``: the 2D
    images it trains on; unused for a volume), as the pipeline computes them."""
    from ..budget import steps_for
    from ..encoder import packaged_weights

    if src.one_volume:
        from ..volume import CONTEXT_SLICES

        shape = tuple(np.shape(src.array))
        chans = 1 if len(shape) == 3 else int(shape[-1])
        warm = warm_start and packaged_weights(chans, context_slices=CONTEXT_SLICES) is not None
        return steps_for([shape], ndim=3, warm=warm)
    shapes = [np.shape(im) for im in images]
    chans = 1 if len(shapes[0]) == 2 else int(shapes[0][-1])
    warm = warm_start and packaged_weights(chans) is not None
    return steps_for(shapes, ndim=2, warm=warm)


@dataclass
class Source:
    """The image layer being segmented.

    ``kind``: ``"image"`` (one 2D image ``(H, W[, C])``), ``"volume"`` (a grey
    ``(Z, Y, X)`` volume: ONE hierarchy, ``array`` and voxel ``spacing`` (sz, sy, sx)
    from the layer's scale) or ``"stack"`` (``(N, H, W, 3)`` colour images, one
    hierarchy each). ``slices`` are the 2D images (views); ``volume`` is True for both
    3D kinds (the result layers are 3D).

    Several co-registered layers chosen together (MRI sequences, :mod:`.inputs`) are one
    source: ``layers`` all of them (``layer``, the first, gives the geometry), the slices
    ``(H, W, C)`` with one channel per layer, ``sequences`` the layer names.
    """

    layer: object
    slices: list
    volume: bool
    kind: str = "image"
    array: object = None
    spacing: tuple = (1.0, 1.0, 1.0)
    layers: list = field(default_factory=list)
    sequences: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.layers:
            self.layers = [self.layer]

    @property
    def one_volume(self) -> bool:
        """True when the layer is segmented as one 3D object."""
        return self.kind == "volume"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.slices[0].shape[:2])

    @property
    def channels(self) -> int:
        s = self.slices[0]
        return 1 if s.ndim == 2 else int(s.shape[-1])


def source_from_layer(layer) -> Source:
    """Split an Image layer into 2D slices; raises InputError for shapes CUTS cannot take."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    rgb = bool(getattr(layer, "rgb", False))
    ndim = data.ndim - (1 if rgb else 0)
    if ndim == 2:
        return Source(layer, [np.asarray(data)], False)
    if ndim == 3 and rgb:
        return Source(layer, pipeline.volume_slices(np.asarray(data), layer.name), True,
                      kind="stack")
    if ndim == 3:
        from ..volume import check_volume

        arr = np.asarray(data)
        check_volume(arr, f"layer '{layer.name}'")
        spacing = tuple(abs(float(v)) for v in np.asarray(layer.scale, float)[-3:])
        return Source(layer, list(arr), True, kind="volume", array=arr, spacing=spacing)
    raise InputError(f"layer '{layer.name}' has shape {tuple(data.shape)}: CUTS segments 2D "
                     "images (grey or RGB) and 3D stacks or volumes ((Z, Y, X) or (N, H, W, 3)); "
                     "take a 3D subset of it first.")


def layer_geometry(layer) -> dict:
    """scale/translate/affine/metadata of the source image ``layer``, for result layers."""
    return {"scale": tuple(layer.scale), "translate": tuple(layer.translate),
            "affine": layer.affine.affine_matrix, "metadata": dict(layer.metadata)}


def current_slice(viewer, src: "Source") -> int:
    """The slice of ``src`` under the viewer's dims (0 for a 2D image)."""
    if not src.volume:
        return 0
    try:
        z = src.layer.world_to_data(viewer.dims.point)[0]
    except Exception:  # noqa: BLE001 - any odd transform: start at the middle
        z = len(src.slices) // 2
    return int(np.clip(round(float(z)), 0, len(src.slices) - 1))


def physical_scale(layer) -> bool:
    """True when ``layer``'s scale is a voxel size in mm (a NIfTI/DICOM source, or a scale
    the user set), not the pixel grid of a photograph."""
    md = getattr(layer, "metadata", None) or {}
    if md.get("format") in ("nifti", "dicom"):
        return True
    return bool(np.any(np.asarray(layer.scale, float) != 1.0))


def _modifier_names(modifiers) -> set[str]:
    return {str(getattr(m, "name", m)) for m in (modifiers or ())}


def click_mode(modifiers) -> str:
    """The prompt a click makes: 'negative' for alt (or control, or meta), else
    'positive' (a plain click or shift-click)."""
    names = _modifier_names(modifiers)
    if names & {"Alt", "Control", "Meta"}:
        return "negative"
    return "positive"

def default_level(counts: np.ndarray, target: int = 10) -> int:
    """The finest level with at most ``target`` clusters (the paper's k = 10)."""
    ok = np.nonzero(np.asarray(counts) <= target)[0]
    return int(ok[0]) if len(ok) else int(len(counts) - 1)


def single_colour(layer, rgba=(1.0, 0.85, 0.0, 1.0)) -> None:
    """Show label 1 of a binary Labels layer in one colour (yellow by default; the
    "CUTS mask" layer takes its object's colour)."""
    try:
        from napari.utils.colormaps import DirectLabelColormap

        layer.colormap = DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0),
                                                         1: rgba})
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def check_encoder(enc, src: Source) -> Optional[str]:
    """Why ``enc`` cannot segment ``src`` (a message), or None."""
    from ..encoder import is_volume_encoder

    if enc is None:
        return None
    if is_volume_encoder(enc):
        k = int(enc.metadata.get("context_slices", 0) or 0)
        if not src.one_volume:
            return str(WeightsError(
                f"the encoder was trained on volumes (each slice with {k} neighbour(s) on "
                f"each side) but layer '{src.layer.name}' is a 2D image or a stack of "
                "colour images; Train a new encoder on it or load 2D weights."))
        if enc.in_channels != (2 * k + 1) * src.channels:
            return str(WeightsError(
                f"the volume encoder expects {enc.in_channels // (2 * k + 1)}-channel "
                f"volumes but {_has(src)} {src.channels} channel(s)."))
        return None
    if enc.in_channels != src.channels:
        return str(WeightsError(
            f"the encoder expects {enc.in_channels}-channel images but "
            f"{_has(src)} {src.channels} channel(s); Train a new encoder or "
            "load weights trained on this kind of image"
            + (" (or tick as many layers in 'Also use')."
               if enc.in_channels > 1 and not getattr(src.layer, "rgb", False) else ".")))
    return None


def _has(src: Source) -> str:
    """"layer 'T1' has" or "layers 'T1', 'T2' chosen together have" (for messages)."""
    if len(src.layers) == 1:
        return f"layer '{src.layer.name}' has"
    return ("layers " + ", ".join(f"'{lay.name}'" for lay in src.layers)
            + " chosen together have")
