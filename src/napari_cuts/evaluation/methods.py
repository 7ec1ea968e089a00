"""The methods ``napari-cuts evaluate`` scores, and the masks each gives.

Binarisation: ``random`` is scored as drawn (two labels, label 1 = foreground,
without the label hint, as the paper's official code does); the other baselines and
``cuts_kmeans``/``cuts_persistent`` take the *label hint* (the cluster most frequent
under the ground truth, :func:`napari_cuts.selection.label_hint`).

- ``random``, ``watershed``, ``felzenszwalb`` (scale 1500, the setting behind the
  paper's table), ``felzenszwalb_s200`` (scale 200, sigma 1, min_size 10, the
  official repository's later setting; an extra row), ``slic`` (10 segments): see
  :mod:`napari_cuts.baselines` (:func:`baseline_masks`). Only ``random`` depends on
  the seed; the others are computed once and count for every seed. On volumes,
  ``slic3d`` (:func:`slic3d_mask`).
- CUTS: for each seed one encoder is trained on all the images of the set (the paper
  trains per dataset); each image is embedded and condensed
  (:func:`napari_cuts.pipeline.segment_image` / ``segment_volume``,
  :func:`variant_masks`).

  - ``cuts_kmeans`` (2D): spectral k-means (k = :data:`KMEANS_K`) of the embeddings +
    label hint.
  - ``cuts_persistent``: the persistent-structures map + label hint.
  - ``cuts_best``: the hierarchy level whose label-hint mask has the best Dice, per
    image (an oracle, as in the paper, :func:`best_level`). All metrics are those of
    that one mask; the paper's code took the best level *separately for each metric*,
    which makes its "best" Hausdorff/SSIM/ERGAS/RMSE slightly more optimistic.
  - ``cuts_click``: no label hint; one click at the mask's innermost point
    (:func:`napari_cuts.selection.innermost_point`: where a clinician would click),
    answered by the tool's own rule (:func:`one_click`): the part of the clicked
    cluster connected to the click (:data:`CLICK_CONNECTED`); with ``ablation`` also
    ``cuts_click_whole``, the whole cluster.
  - ``cuts_click_refined``: the one-click structure and up to :data:`REFINE_STEPS`
    grow / shrink steps along its lineage; the best Dice is kept (:func:`refine_click`).
  - With ``ablation``: ``image_only_best`` / ``image_only_click`` on a hierarchy of the
    image channels alone (``use_embeddings=False``) and ``embedding_only_best`` /
    ``embedding_only_click`` on the unit embeddings alone (``image_weight=0``), the
    rows of :data:`VARIANTS`. On volumes of two or more sequences also
    ``seq_<name>_best`` / ``seq_<name>_click`` for each sequence alone
    (:func:`sequence_methods`): its own encoder trained on that one channel.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..baselines import BASELINES
from ..hierarchy import CLICK_CONNECTED
from ..images import Cancel, check_cancel
from ..metrics import dice as dice_score
from ..selection import label_hint

#: The rows that ``ablation=True`` (``--ablation``) adds, in 2D and in 3D: the whole
#: clicked cluster (``cuts_click_whole``), and the same condensation and click on the
#: image channels alone (``image_only_*``, no network) and on the unit embeddings alone
#: (``embedding_only_*``, the image left out).
ABLATION_METHODS = ("cuts_click_whole", "image_only_best", "image_only_click",
                    "embedding_only_best", "embedding_only_click")
#: Every 2D method, in table order (the paper's rows first, then the extras, then the
#: ablation rows).
METHODS = ("random", "watershed", "felzenszwalb", "felzenszwalb_s200", "slic",
           "cuts_kmeans", "cuts_persistent", "cuts_best", "cuts_click",
           "cuts_click_refined", *ABLATION_METHODS)
CUTS_METHODS = ("cuts_kmeans", "cuts_persistent", "cuts_best", "cuts_click",
                "cuts_click_refined", *ABLATION_METHODS)
#: The 3D methods, in table order.
METHODS_3D = ("slic3d", "cuts_persistent", "cuts_best", "cuts_click", "cuts_click_refined",
              *ABLATION_METHODS)
#: The features each row family condenses: keyword arguments of
#: :func:`napari_cuts.pipeline.segment_image` / ``segment_volume``.
VARIANTS = {
    "cuts": {},                                    # embeddings joined to the image
    "image_only": {"use_embeddings": False},       # the image channels alone
    "embedding_only": {"image_weight": 0.0},       # the unit embeddings alone
}
#: The per-sequence rows of one sequence (``ablation`` on volumes with two or more
#: channels): the CUTS pipeline on that sequence alone, with its own encoder.
SEQUENCE_ROW_KINDS = ("best", "click")
#: A per-sequence row name: ``seq_<key>_best`` / ``seq_<key>_click``.
SEQ_ROW = re.compile(r"^seq_(.+)_(best|click)$")
#: How far ``cuts_click_refined`` walks the clicked lineage each way (grow / shrink).
REFINE_STEPS = 3
#: k of spectral k-means, as in the paper.
KMEANS_K = 10


def sequence_methods(keys: Sequence[str]) -> list[str]:
    """The per-sequence rows ``seq_<key>_best``, ``seq_<key>_click`` of every sequence
    key (:func:`napari_cuts.evaluation.volumes.sequence_keys`), in channel order."""
    return [f"seq_{k}_{kind}" for k in keys for kind in SEQUENCE_ROW_KINDS]


def choose_methods(methods: Optional[Sequence[str]], table: Sequence[str],
                   ablation: bool) -> tuple[list[str], list[str]]:
    """``(chosen, unknown)``: the methods asked for (default: ``table`` without
    :data:`ABLATION_METHODS` unless ``ablation``), without repeats, and those of them
    neither in ``table`` nor a per-sequence row name."""
    default = [m for m in table if ablation or m not in ABLATION_METHODS]
    chosen = default if methods is None else list(dict.fromkeys(methods))
    return chosen, [m for m in chosen if m not in table and not SEQ_ROW.match(m)]


# --------------------------------------------------------------------------- one hierarchy

def _upsample(labels: np.ndarray, pool: int, shape) -> np.ndarray:
    if pool == 1 and labels.shape == tuple(shape):
        return labels
    big = np.repeat(np.repeat(labels, pool, axis=0), pool, axis=1)
    return big[: shape[0], : shape[1]]


def _cluster_at(hier, level: int, point) -> np.ndarray:
    lab = np.asarray(hier.labels(int(level)))
    idx = tuple(int(round(float(v))) for v in point)
    return lab == lab[idx]


def _clicks_connected(hier) -> bool:
    """Whether the tool's click on ``hier`` is the connected part (:data:`CLICK_CONNECTED`
    and a hierarchy that has connected structures)."""
    return bool(CLICK_CONNECTED) and callable(getattr(hier, "structure", None))


def one_click(hier, point) -> tuple[np.ndarray, dict]:
    """The tool's answer to one click at ``point``, without labels: the structure under
    the click at :meth:`napari_cuts.hierarchy.Hierarchy.click_level` (the most persistent
    structure along the clicked lineage), its part connected to the click
    (:func:`_clicks_connected`). The same rule for every ``*_click`` row (2D and 3D, with
    and without the encoder). Returns ``(mask, info)``; ``info["level"]`` is the level
    the mask lives at, the start of :func:`refine_click`."""
    conn = _clicks_connected(hier)
    lv = int(hier.click_level(point, connected=True) if conn else hier.click_level(point))
    mask = hier.structure(point, lv, connected=True) if conn else _cluster_at(hier, lv, point)
    setting = "click_level, connected" if conn else "click_level"
    return mask, {"level": lv, "n_clusters": int(np.asarray(hier.n_clusters)[lv]),
                  "setting": setting}


def refine_candidates(hier, point, start_level: int,
                      steps: int = REFINE_STEPS, connected: bool = False) -> list[int]:
    """The levels a user walking the clicked structure can reach from ``start_level``:
    it, then up to ``steps`` real merges up and ``steps`` strictly smaller structures
    down the clicked lineage (:meth:`~napari_cuts.hierarchy.Hierarchy.step_level`; with
    ``connected``, of the connected structure under the click), without repeats (fewer
    near the root or the finest level)."""
    levels = [int(start_level)]
    for direction in (+1, -1):
        lv = int(start_level)
        for _ in range(int(steps)):
            nxt = int(hier.step_level(point, lv, direction, connected=True) if connected
                      else hier.step_level(point, lv, direction))
            if nxt == lv:
                break
            lv = nxt
            levels.append(lv)
    return levels


def refine_click(hier, point, gt, start_mask, start_level: int,
                 steps: int = REFINE_STEPS, connected: Optional[bool] = None) -> tuple[np.ndarray, dict]:
    """``cuts_click_refined``: the one-click mask and the structures up to ``steps``
    grow / shrink steps from its level (:func:`refine_candidates`); the candidate with
    the best Dice against ``gt`` is kept (a user who stops when the mask looks right).
    Ties keep the click's own answer, then the fewest steps. ``connected`` (default: as
    the click, :data:`CLICK_CONNECTED`): the steps and masks are of the connected
    structure under the click."""
    if connected is None:
        connected = _clicks_connected(hier)
    best, best_d = np.asarray(start_mask, dtype=bool), dice_score(start_mask, gt)
    best_lv, best_step = int(start_level), 0
    cands = refine_candidates(hier, point, start_level, steps, connected=connected)
    for k, lv in enumerate(cands[1:], start=1):
        m = hier.structure(point, lv, connected=True) if connected else _cluster_at(hier, lv, point)
        d = dice_score(m, gt)
        if d > best_d + 1e-12:
            best, best_d, best_lv, best_step = m, d, lv, k
    up = sum(1 for lv in cands[1:] if lv > start_level)
    step = 0 if best_step == 0 else (best_step if best_step <= up else -(best_step - up))
    return best, {"level": best_lv, "n_clusters": int(np.asarray(hier.n_clusters)[best_lv]),
                  "setting": f"step {step:+d} of {len(cands)} candidates"}


def best_level(hierarchy, gt) -> tuple[np.ndarray, int, float]:
    """The oracle: the level whose label-hint mask has the best Dice against ``gt``
    (ties: the finest). Returns ``(mask, level, dice)``."""
    best, best_d, best_lv = None, -1.0, 0
    for lv in range(int(hierarchy.n_levels)):
        m = label_hint(np.asarray(hierarchy.labels(lv)), gt)
        d = dice_score(m, gt)
        if d > best_d:
            best, best_d, best_lv = m, d, lv
    return best, best_lv, best_d


def click_mask(hierarchy, point) -> tuple[np.ndarray, str]:
    """The tool's own one-click answer on a hierarchy, without labels
    (:func:`napari_cuts.selection.click_mask`). Returns ``(mask, rule)`` with ``rule``
    naming what was used."""
    from ..selection import click_mask as tool_click

    return np.asarray(tool_click(hierarchy, point)) != 0, "selection.click_mask"


def hierarchy_rows(hier, gt, point, prefix: str, wanted: set) -> dict:
    """``{method: (mask, info)}`` of the ``prefix`` rows wanted (``_best``,
    ``_persistent``, ``_click``, ``_click_refined``, ``_click_whole``) on one hierarchy."""
    out: dict = {}
    if f"{prefix}_best" in wanted:
        m, lv, _ = best_level(hier, gt)
        out[f"{prefix}_best"] = (m, {"level": lv, "n_clusters": int(hier.n_clusters[lv])})
    if f"{prefix}_persistent" in wanted:
        out[f"{prefix}_persistent"] = (label_hint(np.asarray(hier.persistent()), gt), {})
    if wanted & {f"{prefix}_click", f"{prefix}_click_refined"}:
        m, info = one_click(hier, point)
        if f"{prefix}_click" in wanted:
            out[f"{prefix}_click"] = (m, info)
        if f"{prefix}_click_refined" in wanted:
            out[f"{prefix}_click_refined"] = refine_click(hier, point, gt, m, info["level"])
    if f"{prefix}_click_whole" in wanted:
        # the widget with "Connected part only" unticked: the whole cluster, every part of
        # the image it covers, at the level chosen on the whole cluster's sizes
        lv = int(hier.click_level(point, connected=False))
        out[f"{prefix}_click_whole"] = (_cluster_at(hier, lv, point), {
            "level": lv, "n_clusters": int(np.asarray(hier.n_clusters)[lv]),
            "setting": "click_level, whole cluster"})
    return out


# --------------------------------------------------------------------------- one image or volume

def _add_time(timings: dict, key: str, t0: float) -> None:
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


def variant_masks(encoder, image, gt, point, *, name: str, seed: int, prefix: str,
                  wanted: set, cancel: Cancel, timings: dict, save_dir=None,
                  spacing=None):
    """``({method: (mask, info)}, the segment result)`` of the ``prefix`` rows wanted
    on one image (``spacing`` None: :func:`napari_cuts.pipeline.segment_image`) or
    volume (``segment_volume`` with ``spacing``). ``prefix``: a key of
    :data:`VARIANTS`, or ``seq_<key>`` (one sequence alone: ``image`` is that channel,
    the features of "cuts"). With ``save_dir`` the hierarchy is written to
    ``<name>_seed<S>[_<prefix>].npz``."""
    from .. import pipeline

    kwargs = VARIANTS.get(prefix, {})
    t0 = time.perf_counter()
    if spacing is None:
        res = pipeline.segment_image(encoder, image, seed=seed, cancel=cancel, **kwargs)
    else:
        res = pipeline.segment_volume(encoder, image, spacing=spacing, seed=seed,
                                      cancel=cancel, **kwargs)
    _add_time(timings, "segment" if prefix == "cuts" else f"segment_{prefix}", t0)
    hier = res.hierarchy
    if save_dir is not None:
        suffix = "" if prefix == "cuts" else f"_{prefix}"
        hier.save(Path(save_dir) / f"{name}_seed{seed}{suffix}.npz")
    check_cancel(cancel)
    t0 = time.perf_counter()
    out = hierarchy_rows(hier, gt, point, prefix, wanted)
    _add_time(timings, "scoring", t0)
    return out, res


def cuts_masks(encoder, sample, point, seed: int, wanted: set, cancel: Cancel,
               timings: dict, save_dir=None) -> tuple[dict, dict]:
    """``({method: (mask, info)}, facts about the levels)`` of the 2D CUTS methods (and
    the ablation rows) for one image: one hierarchy per variant of :data:`VARIANTS`,
    ``cuts_kmeans`` from the "cuts" embeddings."""
    masks: dict = {}
    info: dict = {}
    for prefix in VARIANTS:
        mine = {m for m in wanted if m.startswith(prefix + "_")}
        if not mine:
            continue
        rows, res = variant_masks(encoder, sample.image, sample.mask, point, name=sample.name,
                                  seed=seed, prefix=prefix, wanted=mine, cancel=cancel,
                                  timings=timings, save_dir=save_dir)
        masks.update(rows)
        if prefix != "cuts":
            continue
        hier = res.hierarchy
        if "cuts_kmeans" in mine:
            from ..clustering import spectral_kmeans

            t0 = time.perf_counter()
            km = spectral_kmeans(res.features, k=KMEANS_K, seed=seed, cancel=cancel)
            km = _upsample(np.asarray(km), res.pool, sample.mask.shape)
            _add_time(timings, "kmeans", t0)
            masks["cuts_kmeans"] = (label_hint(km, sample.mask), {})
        if wanted & {"cuts_persistent", "cuts_click"}:
            info["persistent_clusters"] = int(np.unique(np.asarray(hier.persistent())).size)
        if "cuts_best" in masks:
            info["best_level_clusters"] = masks["cuts_best"][1]["n_clusters"]
        info["n_levels"] = int(hier.n_levels)
    return masks, info


def baseline_masks(sample, seeds: Sequence[int], wanted: Sequence[str]):
    """``(method, seeds it counts for, mask)`` of every 2D baseline wanted on one image:
    the seeded ones (``random``) once per seed, the others once for every seed."""
    for m in wanted:
        fn, seeded, hint = BASELINES[m]
        runs = [(s, [s]) for s in seeds] if seeded else [(seeds[0], list(seeds))]
        for s, seed_list in runs:
            lab = fn(sample.image, seed=s)
            yield m, seed_list, (label_hint(lab, sample.mask) if hint else lab > 0)


def slic3d_mask(vol, point) -> tuple[np.ndarray, dict]:
    """``slic3d``: the best 3D SLIC supervoxel under the click (an oracle over its
    settings, :func:`napari_cuts.baselines.slic3d_best`) and its setting."""
    from ..baselines import slic3d_best

    m, info = slic3d_best(vol.image, vol.mask, point, spacing=vol.spacing)
    return m, {"setting": f"n_segments={info['n_segments']} compactness={info['compactness']:g}"}
