"""napari-cuts: unsupervised, multi-granular segmentation (CUTS) for napari and the command line.

The public API is imported lazily so that ``import napari_cuts`` (done by napari
when it reads the plugin manifest) does not pull in torch: each name below is
imported from its module on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_LAZY = {
    "train_encoder": "encoder",
    "embed": "encoder",
    "Encoder": "encoder",
    "load_encoder": "encoder",
    "condense": "condensation",
    "Hierarchy": "hierarchy",
    "spectral_kmeans": "clustering",
    "select_cluster": "selection",
    "label_hint": "selection",
    "read_image": "io",
    "write_mask": "io",
    "segment": "pipeline",
    "segment_image": "pipeline",
    "segment_volume": "pipeline",
    "segment_from_prompts": "prompts",
    "CutsError": "errors",
    "InputError": "errors",
    "Cancelled": "errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'napari_cuts' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
