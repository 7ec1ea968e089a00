"""``napari-cuts evaluate``: segmentation quality measured the way the CUTS paper does.

:func:`run_evaluation` reads a labelled folder, runs the classical baselines and the
CUTS variants, scores every binary mask against the ground truth with
:mod:`napari_cuts.metrics`, and writes ``results.json``, ``results.md``, a CSV of
every mask's scores, ``dice.png`` and ``examples.png``; ``--clicks N`` runs the
simulated user instead (:func:`run_clicks_evaluation`).

The package's modules:

- :mod:`.datasets`: the 2D folder layouts (retina-like folders, NIfTI pairs scored as
  slices), NIfTI case discovery, the splits and case lists;
- :mod:`.volumes`: folders of volumes scored in 3D (Decathlon, NIfTI cases with one
  file per sequence);
- :mod:`.methods`: the method names, the baselines and the CUTS variants, the tool's
  one click and its refinement;
- :mod:`.runner`: the runs: one driver, and a case source per layout (2D images,
  volumes) for what differs;
- :mod:`.report`: the statistics, ``results.md``, the CSV and the figures;
- :mod:`.clicks`: the simulated user (``--clicks``) and the methods it is put to;
  :mod:`.click_report` its numbers, table and figure.

The names below are those the CLI, the benchmarks and the tests use.
"""

from __future__ import annotations

from ..hierarchy import CLICK_CONNECTED
from ..metrics import hausdorff_3d, score_3d, surface_distances
from ..selection import innermost_point
from .clicks import run_clicks_evaluation
from .datasets import (
    SLICE_NEIGHBOURS, SPLITS, Dataset, NiftiCase, Sample, load_dataset, nifti_cases,
    read_case_list, robust_unit, select_cases,
)
from .methods import (
    ABLATION_METHODS, CUTS_METHODS, KMEANS_K, METHODS, METHODS_3D, REFINE_STEPS,
    SEQUENCE_ROW_KINDS, VARIANTS, best_level, click_mask, one_click, refine_candidates,
    refine_click, sequence_methods,
)
from .report import DISPLAY, DISPLAY_3D, PAPER_RETINA, summarise
from .runner import (
    N_EXAMPLES, PER_CASE_FIELDS, PER_IMAGE_FIELDS,
    run_evaluation, run_evaluation_3d,
)
from .volumes import (
    Volume, VolumeSet, decathlon_modalities, load_volumes, sequence_key, sequence_keys,
    structure_mask, volume_layout,
)

__all__ = [
    "ABLATION_METHODS", "CLICK_CONNECTED", "CUTS_METHODS", "DISPLAY", "DISPLAY_3D", "Dataset", "KMEANS_K", "METHODS",
    "METHODS_3D", "N_EXAMPLES", "NiftiCase", "PAPER_RETINA", "PER_CASE_FIELDS",
    "PER_IMAGE_FIELDS", "REFINE_STEPS", "SEQUENCE_ROW_KINDS", "SLICE_NEIGHBOURS",
    "SPLITS", "Sample", "VARIANTS", "Volume", "VolumeSet", "best_level", "click_mask",
    "decathlon_modalities", "hausdorff_3d", "innermost_point", "load_dataset",
    "load_volumes", "nifti_cases", "one_click", "read_case_list", "refine_candidates",
    "refine_click", "robust_unit", "run_clicks_evaluation", "run_evaluation",
    "run_evaluation_3d", "score_3d", "select_cases", "sequence_key", "sequence_keys",
    "sequence_methods", "structure_mask", "summarise", "surface_distances",
    "volume_layout",
]
