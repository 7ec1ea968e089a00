"""The CUTS dock widget (napari contribution ``napari-cuts.make_widget``).

Parts, composed by the panel :class:`CutsWidget` (:mod:`.panel`): :mod:`.ui` (the
controls), :mod:`.settings` (what the user chose, the source layer), :mod:`.jobs`
(thread workers), :mod:`.model` (the state model: display values, background, cut-away,
mask; numpy only, no Qt), :mod:`.objects` (objects as prompts, their history; numpy
only), :mod:`.clicks` (prompts -> masks, the objects' layers), :mod:`.prompts` (the
folder the solver reads, solving off the GUI thread), :mod:`.promptlayers` ("CUTS
points" and "CUTS prompts"), :mod:`.view3d` (the 3D view), :mod:`.export`,
:mod:`.phate` (the PHATE view), :mod:`.inputs` (several layers as one input) and
:mod:`.cohort` ("Apply to all images"). What the parts share lives in one
:class:`~napari_cuts._widget.state.WidgetState` (:mod:`.state`, no Qt).

The panel (and so Qt) is imported on first use of ``CutsWidget``: the numpy-only
parts (:mod:`.state`, :mod:`.objects`, :mod:`.model`) import without a Qt binding.
"""

from .settings import (DEVICES, LABELS_NAME, LEVELS_NAME, MASK_NAME, NO_IMAGE_HINT, UNITS, Settings, Source,
                       click_mode, default_level, source_from_layer)

__all__ = ["CutsWidget", "Settings", "Source", "source_from_layer", "click_mode",
           "default_level", "LEVELS_NAME", "LABELS_NAME", "MASK_NAME", "NO_IMAGE_HINT", "UNITS", "DEVICES"]


def __getattr__(name):
    if name == "CutsWidget":
        from .panel import CutsWidget

        return CutsWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
