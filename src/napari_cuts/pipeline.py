"""The one path from images to hierarchies, shared by the CLI and the napari widget.

Everything long here reports through ``progress(done, total, message)`` and stops
when ``cancel()`` returns True (raising :class:`~napari_cuts.errors.Cancelled`), so
the widget's thread worker, the CLI's progress bar and the tests drive the same code.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from . import __version__
from .errors import InputError
from .images import Cancel, Progress, as_image_list, check_cancel, check_image, report

#: Condensation runs on at most this many points; larger images are condensed on a
#: grid of block means of their embeddings and the labels mapped back guided by the
#: image (:func:`refined_hierarchy`).
MAX_POINTS = 512 * 512
#: Weight of the encoder-normalised image channels joined to the unit-length embeddings
#: before condensation and k-means, divided by sqrt(C): black-to-white in every channel
#: then moves a pixel by 8 while two embeddings 60 degrees apart are 1 apart. Measured:
#: MNI ventricles best-level Dice 0.37 -> 0.71, persistent 0.25 -> 0.69; retina best
#: 0.75 -> 0.80, persistent 0.69 -> 0.76, k-means 0.70 -> 0.74 (one encoder each).
IMAGE_WEIGHT = 8.0
#: Condensations per volume (:func:`segment_volume`, ``stability_runs``): with 2 or more,
#: the hierarchy and more with the next seeds, against which each structure's
#: reproducibility is scored for the persistent map. An option, off (1) by default: on the
#: MNI ventricles the whole persistent structure under the click went from 0.43 ranked by
#: persistence to 0.66 ranked by reproducibility (3 encoders x 5 seeds; >= 0.70 in
#: 6 of 15 draws instead of 2), but on the
#: 20 dev hippocampi the persistent map fell from 0.267 to 0.213.
STABILITY_RUNS = 1
#: Default training budget (seconds of wall time) when neither epochs nor seconds is given
#: and the encoder is trained from scratch.
DEFAULT_SECONDS = 60.0
#: Guided smoothing of a 2D image's embeddings (see ``segment_volume``): off for 2D.
#: Measured (retina, 3 seeds, warm start + 15 s): 5 iterations gave best level /
#: persistent / one click 0.820 / 0.781 / 0.787 against 0.822 / 0.786 / 0.792 without.
GUIDE_ITERATIONS_2D = 0
#: Default fine-tuning budget (seconds) when the encoder starts from the packaged
#: warm-start weights (:func:`napari_cuts.encoder.packaged_weights`): 2D images, no
#: epochs/seconds given. Measured on the development retina set (issue 13).
WARM_START_SECONDS = 15.0


@dataclass
class Plan:
    """What a segmentation of an image of this size will do, before doing it."""

    shape: tuple[int, int]
    pool: int
    grid_shape: tuple[int, int]
    estimated_mb: float
    estimated_seconds: float
    notes: list[str] = field(default_factory=list)


def plan(shape, max_points: int = MAX_POINTS) -> Plan:
    """Estimate memory and time for segmenting one 2D image of ``shape`` (H, W[, C]).

    The estimates come from the benchmarks on a 2-core CPU: embedding costs about
    0.5 us per pixel, condensation close to linear in the number of grid points.
    """
    h, w = int(shape[0]), int(shape[1])
    pool = max(1, math.ceil(math.sqrt(h * w / max_points)))
    gh, gw = math.ceil(h / pool), math.ceil(w / pool)
    points = gh * gw
    # Embedding tiles are bounded; what stays is the grid embedding (float32, 128-d)
    # plus condensation's working set (kNN graph and a few copies of the points), and
    # full-resolution per-pixel arrays (image copies, label maps, the figure): about
    # 400 bytes a pixel, measured on the 8-megapixel HRF photograph (4.2 GB peak).
    est_mb = points * 128 * 4 * 6 / 2**20 + h * w * 400 / 2**20 + 300
    est_s = h * w * 1.0e-6 + points * 4.0e-5
    notes = []
    if pool > 1:
        notes.append(
            f"The image has {h * w / 1e6:.1f} million pixels: condensing on a {gh} x {gw} "
            f"grid of {pool} x {pool} block means of the embeddings, labels mapped back "
            "to full resolution along the image's edges."
        )
    return Plan((h, w), pool, (gh, gw), est_mb, est_s, notes)


@dataclass
class SegmentResult:
    """The outcome of segmenting one 2D image.

    ``hierarchy.labels(level)`` is at the image's full resolution, ``(H, W)``.
    ``embeddings`` is the (possibly pooled) encoder output, ``(h, w, D)``; ``features``
    what condensation saw (:func:`clustering_features`), ``(h, w, D + C)``.
    """

    hierarchy: object
    embeddings: np.ndarray
    pool: int
    notes: list[str]
    seconds: dict
    features: Optional[np.ndarray] = None


def block_mean(x: np.ndarray, pool: int) -> np.ndarray:
    """Means over ``pool x pool`` blocks of ``(H, W, C)``, top-left aligned; edge blocks
    average the pixels they have (as ``embed(pool=k)`` does)."""
    if pool <= 1:
        return x
    h, w = x.shape[:2]
    rows, cols = np.arange(0, h, pool), np.arange(0, w, pool)
    sums = np.add.reduceat(np.add.reduceat(x.astype(np.float64), rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(np.append(rows, h)), np.diff(np.append(cols, w)))
    return (sums / counts[..., None]).astype(np.float32)


def clustering_features(embeddings: np.ndarray, image01: np.ndarray,
                        weight: float = IMAGE_WEIGHT) -> np.ndarray:
    """Unit-length embeddings ``(h, w, D)`` joined to ``weight / sqrt(C)`` times the
    encoder-normalised image ``(h, w, C)`` in [0, 1].

    The encoder's embeddings keep texture but lose part of the intensity contrast (CSF
    against brain on grey MRI, a pale lesion on a fundus); the image channels give it back.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    unit = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    c = image01.shape[-1]
    return np.concatenate([unit, (weight / np.sqrt(c)) * image01], axis=-1).astype(np.float32)


def smooth_embedding_columns(feats: np.ndarray, image01: np.ndarray, iterations: int,
                             sigma: float, *, spacing=None, cancel: Cancel = None,
                             times: Optional[dict] = None) -> Optional[dict]:
    """Smooth, in place, the embedding columns of joined ``feats`` (those before the
    ``image01`` channels) within the image's regions (:func:`napari_cuts.volume.guided_smooth`).
    Returns the setting for the hierarchy's metadata (None when ``iterations`` is 0);
    ``times["smooth"]`` gets the seconds it took."""
    if iterations <= 0:
        return None
    from .volume import guided_smooth

    t0 = time.perf_counter()
    d = feats.shape[-1] - image01.shape[-1]
    guided_smooth(feats[..., :d], image01, sigma=sigma, iterations=iterations,
                  spacing=spacing, inplace=True, cancel=cancel)
    if times is not None:
        times["smooth"] = time.perf_counter() - t0
    return {"iterations": int(iterations), "sigma": float(sigma)}


def available_memory_mb() -> float | None:
    """Memory the OS can still give this process, in MB (None where unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(p: Plan) -> None:
    """Raise :class:`ResourceError` if the plan would not fit the free memory."""
    free = available_memory_mb()
    if free is not None and p.estimated_mb > 0.9 * free:
        from .errors import ResourceError

        raise ResourceError(
            f"segmenting a {p.shape[0]} x {p.shape[1]} image needs about {p.estimated_mb:.0f} MB "
            f"but only {free:.0f} MB are free; close other programs or pass a smaller "
            "max_points (--max-points) to condense on a coarser grid."
        )


def get_encoder(images, *, weights=None, epochs=None, seconds=None, seed: int = 0,
                device: str = "auto", progress: Progress = None, cancel: Cancel = None,
                warm_start=None):
    """Load weights (``weights`` is a path or an Encoder) or train an encoder on ``images``.

    ``warm_start`` decides where training starts:

    * ``None`` (default): from the packaged generic weights for the images' channel
      count (:func:`napari_cuts.encoder.packaged_weights`) when no budget is given
      (``epochs`` and ``seconds`` both None), fine-tuned for :data:`WARM_START_SECONDS`;
      otherwise, or where the package ships no weights for that channel count (it
      falls back, it does not fail), from scratch for :data:`DEFAULT_SECONDS`;
    * ``True``: from the packaged weights whatever the budget (from scratch where
      there are none);
    * ``False``: from scratch, as in the paper;
    * a path or an Encoder: from those weights (a channel mismatch raises
      :class:`~napari_cuts.errors.WeightsError`).

    ``encoder.metadata["warm_start"]`` records the start point (file, sha256) or None.
    Returns ``(encoder, trained)``.
    """
    from .encoder import Encoder, load_encoder, packaged_weights, train_encoder

    if weights is not None:
        enc = weights if isinstance(weights, Encoder) else load_encoder(weights, device=device)
        return enc, False
    no_budget = epochs is None and seconds is None
    init = None
    if warm_start is None:
        warm_start = no_budget
    if isinstance(warm_start, (str, Path, Encoder)):
        init = warm_start
    elif warm_start:
        stack = as_image_list(images)
        init = packaged_weights(stack[0].shape[-1])
    if no_budget:
        seconds = WARM_START_SECONDS if init is not None else DEFAULT_SECONDS
    enc = train_encoder(images, epochs=epochs, seconds=seconds, seed=seed, device=device,
                        progress=progress, cancel=cancel, init=init)
    return enc, True


def segment_image(encoder, image, *, seed: int = 0, max_points: int = MAX_POINTS,
                  progress: Progress = None, cancel: Cancel = None,
                  image_weight: float = IMAGE_WEIGHT, use_embeddings: bool = True,
                  guide_iterations: Optional[int] = None, guide_sigma: Optional[float] = None,
                  **condense_params) -> SegmentResult:
    """Embed one 2D image ``(H, W[, C])`` and condense it into a coarse-to-fine hierarchy.

    For the ablations: ``use_embeddings=False`` condenses the encoder-normalised image
    channels alone (no network), ``image_weight=0`` the unit embeddings alone.
    ``guide_iterations`` > 0 smooths the embeddings within the image's regions first, as
    for volumes (:func:`napari_cuts.volume.guided_smooth`; off by default in 2D,
    ``GUIDE_ITERATIONS_2D``)."""
    from .condensation import condense
    from .encoder import embed, normalised_image

    img = check_image(image)
    p = plan(img.shape, max_points)
    check_fits(p)
    times = {}
    t0 = time.perf_counter()
    report(progress, 0, 2, "embedding")
    emb = embed(encoder, img, pool=p.pool, cancel=cancel) if use_embeddings else None
    times["embed"] = time.perf_counter() - t0
    check_cancel(cancel)

    def cond_progress(done, total, message):
        report(progress, 1, 2, f"condensing: {message}")

    t0 = time.perf_counter()
    guided = None
    full01 = normalised_image(encoder, img)
    img01 = block_mean(full01, p.pool)
    if not use_embeddings:
        w = image_weight if image_weight > 0 else IMAGE_WEIGHT
        feats = ((w / np.sqrt(img01.shape[-1])) * img01).astype(np.float32)
    elif image_weight > 0:
        feats = clustering_features(emb, img01, image_weight)
        from .volume import GUIDE_SIGMA
        guided = smooth_embedding_columns(
            feats, img01, GUIDE_ITERATIONS_2D if guide_iterations is None else int(guide_iterations),
            GUIDE_SIGMA if guide_sigma is None else float(guide_sigma), cancel=cancel, times=times)
    else:
        feats = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    condense_params.setdefault("normalize", False)  # the embedding part is unit length already
    hier = condense(feats, seed=seed, progress=cond_progress, cancel=cancel, **condense_params)
    times["condense"] = time.perf_counter() - t0
    if p.pool > 1:
        t0 = time.perf_counter()
        hier = refined_hierarchy(hier, full01[None], (1, p.pool, p.pool), normalised=True)
        times["refine"] = time.perf_counter() - t0
    hier.metadata.update({"napari_cuts_version": __version__, "seed": int(seed), "pool": p.pool,
                          "image_weight": image_weight, "use_embeddings": bool(use_embeddings),
                          "guided_smoothing": guided,
                          "encoder": {k: encoder.metadata.get(k) for k in
                                      ("in_channels", "seed", "version") if k in encoder.metadata}})
    report(progress, 2, 2, "done")
    return SegmentResult(hier, emb, p.pool, list(p.notes), times, feats)


# --------------------------------------------------------------------------- volumes

#: ``encoder.metadata["volume_input"]`` of volume encoders trained on volumes scaled per
#: channel by their own percentiles (:func:`volume_grid`); encoders without it (saved
#: before) get the raw intensities they were trained on.
VOLUME_INPUT = "per-volume percentiles"


def volume_grid(volume, spacing=None, max_points: Optional[int] = None, *, scaled: bool = True):
    """The working grid of a volume: ``(plan, grid volume (z, y, x, C) float32)``
    (:func:`napari_cuts.volume.volume_plan`, block means of the volume scaled per
    channel to [0, 1] between its own 0.5 and 99.5 percentiles; ``scaled=False``: of
    the raw intensities, for encoders saved before that scaling).

    The per-volume scaling comes first because MRI intensities have no fixed unit: one
    encoder for a cohort (``batch``, "Apply to all images") would otherwise normalise
    every volume with the percentiles of the volumes it was trained on, and a scan ten
    times brighter would be clipped flat. A volume and any positive affine rescaling of it
    give the same hierarchy."""
    from .volume import MAX_VOLUME_POINTS, block_reduce, check_volume, normalise_volume, volume_plan

    vol = check_volume(volume)
    if scaled:
        vol = normalise_volume(vol)
    p = volume_plan(vol.shape, spacing, MAX_VOLUME_POINTS if max_points is None else max_points)
    return p, block_reduce(vol, p.pools)


def volume_training_slices(grid: np.ndarray, context: int, max_slices: int = 64) -> list:
    """Training images of a volume's working grid: evenly spaced informative slices
    ``(y, x, (2k+1) C)`` with their ``context`` neighbours as channels."""
    from .volume import context_stack

    ctx = context_stack(grid, context)
    idx = [i for i in range(grid.shape[0]) if informative(grid[i])]
    if not idx:
        raise InputError("every slice of the volume is constant; there is nothing to segment.")
    if len(idx) > max_slices:
        idx = [idx[i] for i in np.linspace(0, len(idx) - 1, max_slices).round().astype(int)]
    return [ctx[i] for i in idx]


def train_volume_encoder(volume, *, spacing=None, max_points: Optional[int] = None,
                         context: Optional[int] = None, epochs=None, seconds=None, seed: int = 0,
                         device: str = "auto", progress: Progress = None, cancel: Cancel = None,
                         **options):
    """Train a 2.5D encoder on one volume ``(Z, Y, X[, C])``, or several volumes of the
    same channel count (a list), on their working grids (see :mod:`napari_cuts.volume`)."""
    from .encoder import train_encoder
    from .volume import CONTEXT_SLICES

    k = CONTEXT_SLICES if context is None else int(context)
    vols = volume if isinstance(volume, (list, tuple)) else [volume]
    sps = spacing if isinstance(volume, (list, tuple)) and spacing is not None else [spacing] * len(vols)
    imgs = []
    per = max(8, 64 // len(vols))
    for v, sp in zip(vols, sps):
        _, grid = volume_grid(v, sp, max_points)
        imgs += volume_training_slices(grid, k, per)
    if epochs is None and seconds is None:
        seconds = DEFAULT_SECONDS
    enc = train_encoder(imgs, epochs=epochs, seconds=seconds, seed=seed, device=device,
                        progress=progress, cancel=cancel, context_slices=k, **options)
    enc.metadata["volume"] = True       # embed() then reads (Z, Y, X[, C]) as a volume
    enc.metadata["volume_input"] = VOLUME_INPUT
    return enc


def segment_volume(encoder, volume, *, spacing=None, seed: int = 0,
                   max_points: Optional[int] = None, progress: Progress = None,
                   cancel: Cancel = None, image_weight: float = IMAGE_WEIGHT,
                   use_embeddings: bool = True, guide_iterations: Optional[int] = None,
                   guide_sigma: Optional[float] = None, stability_runs: Optional[int] = None,
                   **condense_params) -> SegmentResult:
    """Segment a volume ``(Z, Y, X)`` / ``(Z, Y, X, C)`` as ONE object.

    Embeds its working grid slice by slice (with slice context for a 2.5D encoder),
    joins the normalised image, condenses all grid voxels at once (6-connected pre-merge
    weighted by the grid ``spacing``) and maps the labels back: ``hierarchy.labels(l)``
    is ``(Z, Y, X)``, one id one structure across all slices. ``use_embeddings=False``
    condenses the normalised image (with its slice context) alone (the ablation).

    Before condensing, the unit embeddings are smoothed within the image's regions
    (:func:`napari_cuts.volume.guided_smooth`, ``guide_iterations`` /
    ``guide_sigma``, defaults ``GUIDE_ITERATIONS`` / ``GUIDE_SIGMA``; 0 iterations: off;
    never for the ablations, whose input is the image alone or the embeddings alone).
    ``stability_runs`` (default ``STABILITY_RUNS``, 1): condensations of the same features
    with seeds ``seed, seed + 1, ...``; the first is the hierarchy, the others score how
    reproducible each of its structures is (:meth:`Hierarchy.reproducibility_against`) and
    the persistent map ranks the structures by that score (1: one run, ranked by persistence;
    each extra run costs about one condensation, 10 s on the MNI volume).
    ``result.pool`` is the block size per axis; ``result.embeddings`` the grid's
    ``(z, y, x, D)``."""
    from .condensation import condense
    from .encoder import embed_volume, normalised_image
    from .volume import GUIDE_ITERATIONS, GUIDE_SIGMA, check_volume, context_stack, estimate_note

    guide_iterations = GUIDE_ITERATIONS if guide_iterations is None else int(guide_iterations)
    guide_sigma = GUIDE_SIGMA if guide_sigma is None else float(guide_sigma)
    vol = check_volume(volume)
    t0 = time.perf_counter()
    p, grid = volume_grid(vol, spacing, max_points,
                          scaled=encoder.metadata.get("volume_input") == VOLUME_INPUT)
    check_fits_volume(p)
    times = {"grid": time.perf_counter() - t0}
    k = int(encoder.metadata.get("context_slices", 0) or 0)
    t0 = time.perf_counter()

    def emb_progress(done, total, message):
        report(progress, done, total + max(1, total // 3), message)

    emb = embed_volume(encoder, grid, progress=emb_progress, cancel=cancel) if use_embeddings else None
    times["embed"] = time.perf_counter() - t0
    check_cancel(cancel)
    ctx = context_stack(grid, k) if k else grid
    img01 = np.stack([normalised_image(encoder, ctx[i], allow_constant=True)
                      for i in range(ctx.shape[0])])
    z = grid.shape[0]

    def cond_progress(done, total, message):
        report(progress, z, z + max(1, z // 3), f"condensing: {message}")

    guided = None
    if use_embeddings:
        feats = clustering_features(emb, img01, image_weight)
        if image_weight > 0 and guide_iterations > 0:
            report(progress, z, z + max(1, z // 3), "smoothing the embeddings within the image")
            guided = smooth_embedding_columns(feats, img01, guide_iterations, guide_sigma,
                                              spacing=p.grid_spacing, cancel=cancel, times=times)
    else:
        feats = ((image_weight / np.sqrt(img01.shape[-1])) * img01).astype(np.float32)
    condense_params.setdefault("normalize", False)
    t0 = time.perf_counter()
    hier = condense(feats, seed=seed, spacing=p.grid_spacing, progress=cond_progress,
                    cancel=cancel, **condense_params)
    times["condense"] = time.perf_counter() - t0
    runs = STABILITY_RUNS if stability_runs is None else max(1, int(stability_runs))
    if runs > 1:
        t0 = time.perf_counter()
        others = []
        for r in range(1, runs):
            def again(done, total, message, r=r):
                report(progress, z, z + max(1, z // 3),
                       f"condensing again (seed {seed + r}) to test each structure: {message}")
            others.append(condense(feats, seed=seed + r, spacing=p.grid_spacing, progress=again,
                                   cancel=cancel, **condense_params))
        hier.set_reproducibility(hier.reproducibility_against(others, seed=seed))
        times["stability"] = time.perf_counter() - t0
    if p.pools != (1, 1, 1):
        t0 = time.perf_counter()
        hier = refined_hierarchy(hier, vol, p.pools)
        times["refine"] = time.perf_counter() - t0
    hier.metadata.update({"napari_cuts_version": __version__, "seed": int(seed),
                          "volume": True, "refined": p.pools != (1, 1, 1), "spacing": list(p.spacing),
                          "pools": list(p.pools), "grid_spacing": list(p.grid_spacing),
                          "image_weight": image_weight, "use_embeddings": bool(use_embeddings),
                          "guided_smoothing": guided, "stability_runs": runs,
                          "encoder": {key: encoder.metadata.get(key) for key in
                                      ("in_channels", "seed", "version", "context_slices")
                                      if key in encoder.metadata}})
    report(progress, 1, 1, "done")
    return SegmentResult(hier, emb, p.pools, [*p.notes, estimate_note(p)], times, feats)


def refined_hierarchy(hier, volume: np.ndarray, pools, *, normalised: bool = False):
    """A grid hierarchy mapped to every voxel of ``volume`` by
    :func:`napari_cuts.volume.refine_finest` (image-guided, not nearest blocks): each
    voxel takes the base region, of its own block or a neighbouring one, whose clusters
    match its intensity best over every level of the hierarchy (the one-cluster root
    left out: it is the same for every candidate).

    A 2D hierarchy (a large photograph condensed on block means) is refined as a volume
    of one slice: ``volume`` is then ``(1, H, W, C)``, ``pools`` ``(1, p, p)``, and the
    result is 2D again. ``normalised``: ``volume`` is already in [0, 1] per channel (the
    encoder's normalisation of a 2D image)."""
    from .hierarchy import Hierarchy
    from .volume import normalise_volume, refine_finest

    flat = hier.finest.ndim == 2
    base = hier.finest[None] if flat else hier.finest
    last = hier.n_levels - 1 if hier.n_levels > 1 and int(hier.n_clusters[-1]) <= 1 else hier.n_levels
    img = np.asarray(volume, dtype=np.float32) if normalised else normalise_volume(volume)
    if img.ndim == 3:
        img = img[..., None]
    full = refine_finest(base, img, pools, luts=[hier.lut(lv) for lv in range(last)])
    if flat:
        full = full[0]
    meta = dict(hier.metadata)
    meta["grid_shape"] = list(hier.shape)
    if flat:
        meta["pool"] = int(pools[-1])
    else:
        meta["pools"] = [int(v) for v in pools]
    return Hierarchy(full, [hier.lut(lv) for lv in range(hier.n_levels)],
                     iterations=hier.iterations, iterations_total=hier.iterations_total,
                     metadata=meta, check=False, reproducibility=hier.reproducibility)


def check_fits_volume(p) -> None:
    """Raise :class:`ResourceError` if a volume plan would not fit the free memory."""
    free = available_memory_mb()
    if free is not None and p.estimated_mb > 0.9 * free:
        from .errors import ResourceError

        raise ResourceError(
            f"segmenting a {' x '.join(map(str, p.shape))} volume needs about "
            f"{p.estimated_mb:.0f} MB but only {free:.0f} MB are free; close other programs, "
            "crop the volume, or pass a smaller max_points (--max-points) for a coarser grid.")


def volume_slices(volume, name: str = "volume") -> list[np.ndarray]:
    """Split a 3D array into 2D slices along its first axis.

    ``(Z, Y, X)`` grey volumes and ``(N, H, W, C)`` stacks of colour images give
    ``Z`` (or ``N``) images.
    """
    arr = np.asarray(volume)
    if arr.ndim == 3 or arr.ndim == 4:
        return [arr[i] for i in range(arr.shape[0])]
    raise InputError(f"{name} has shape {arr.shape}; expected (Z, Y, X) or (N, H, W, C).")


def training_subset(images: list, max_images: int = 64) -> list:
    """Evenly spaced images of a long stack, for training on a volume without every slice."""
    if len(images) <= max_images:
        return list(images)
    idx = np.linspace(0, len(images) - 1, max_images).round().astype(int)
    return [images[i] for i in idx]


def informative(img: np.ndarray) -> bool:
    """True if a 2D image has something to segment (not constant, finite)."""
    a = np.asarray(img)
    return bool(np.isfinite(a).all() and a.size and a.max() > a.min())


# --------------------------------------------------------------------------- CLI job

def _figure_levels(image: np.ndarray, hier, path: Path, max_panels: int = 7) -> None:
    """Write the coarse-to-fine figure: the image, then levels from coarse to fine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .fileutil import save_figure
    from .io import label_colours

    def overlay(lab, base, alpha=0.5):
        lab = np.asarray(lab, dtype=np.int64)
        table = label_colours(int(lab.max()) + 1)[1:].astype(np.float32) / 255.0
        grey = base if base.ndim == 2 else base.mean(axis=-1)
        return (1 - alpha) * grey[..., None] + alpha * table[lab]

    n = hier.n_levels
    # Levels spread geometrically in cluster count, from the coarsest with >= 2 clusters
    # up to about 256 clusters (finer levels look like noise at figure size).
    counts = np.asarray(hier.n_clusters)
    candidates = [lv for lv in range(n) if 2 <= counts[lv] <= 256] or [n - 1]
    lo_c, hi_c = counts[candidates[-1]], counts[candidates[0]]
    targets = np.geomspace(lo_c, hi_c, min(max_panels - 2, len(candidates)))
    picks = sorted({min(candidates, key=lambda lv: abs(np.log(counts[lv]) - np.log(t)))
                    for t in targets}, reverse=True)
    disp = image.astype(np.float32)
    if disp.ndim == 3 and disp.shape[-1] == 1:
        disp = disp[..., 0]
    lo, hi = np.percentile(disp, [0.5, 99.5])
    disp = np.clip((disp - lo) / max(hi - lo, 1e-6), 0, 1)
    panels = [("image", disp)]
    for lv in picks:
        lab = hier.labels(lv)
        panels.append((f"level {lv}: {int(counts[lv])} clusters",
                       overlay(lab, disp)))
    panels.append(("persistent structures", overlay(hier.persistent(), disp)))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), dpi=110)
    for ax, (title, im) in zip(np.atleast_1d(axes), panels):
        ax.imshow(im, cmap="gray" if im.ndim == 2 else None, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle("CUTS: coarse (left) to fine (right)", fontsize=9)
    save_figure(fig, path)


def run_segment(image_path, out_dir, *, weights=None, epochs=None, seconds=None, seed: int = 0,
                device: str = "auto", max_points: Optional[int] = None, slices=None,
                progress: Progress = None, cancel: Cancel = None, log=print,
                sequences: Optional[bool] = None, warm_start=None) -> dict:
    """The ``napari-cuts segment`` job: read, train or load, condense, write the outputs.

    2D input writes ``hierarchy.npz``, ``persistent.png``/``.npy``, ``levels.png`` (and
    ``persistent.nii.gz`` with the source geometry for NIfTI/DICOM input). A volume is
    ONE object: one ``hierarchy.npz`` with ``labels`` (L, Z, Y, X) in the reader's axis
    order, ``persistent.npy`` / ``persistent.nii.gz`` (source geometry) and a
    ``levels.png`` of the middle slice and an orthogonal view. ``slices`` (a list of
    indices) segments those slices one by one instead (``slices/zNNN/hierarchy.npz``).
    ``image_path`` may be a list of paths: co-registered sequences on one grid (T1, T2,
    FLAIR ...), ONE input with one channel each (:func:`napari_cuts.sequences.
    stack_sequences`); a list of one path is that path. ``sequences`` overrides the
    4D NIfTI guess (``True``: its volumes are sequences, ``False``: a time series).
    ``warm_start``: where a 2D encoder's training starts (:func:`get_encoder`; by
    default the packaged weights when no budget is given); a volume's 2.5D encoder is
    always trained from scratch. Returns a summary dict (also written as ``run.json``;
    ``sequences`` lists the channel names of a multi-sequence input; ``warm_start`` the
    encoder's start point).
    """
    from .fileutil import make_output_dir, write_json
    from .io import read_image

    t_start = time.perf_counter()
    paths = list(image_path) if isinstance(image_path, (list, tuple)) else [image_path]
    if not paths:
        raise InputError("no image given.")
    if len(paths) == 1:
        image_path = paths[0]
        src = read_image(image_path, sequences=sequences)
    else:
        from .sequences import read_sequences

        src = read_sequences(paths, sequences=sequences)  # checked before any output
        image_path = paths[0]
    out = make_output_dir(out_dir)
    for note in src.notes:
        log(note)
    data = np.asarray(src.data)
    # (Z, Y, X), (N, H, W, 3), (Z, Y, X, C) sequences; not (H, W, 3) or (Y, X, C) sequences
    is_volume = src.ndim_spatial == 3
    summary = {"napari_cuts_version": __version__, "input": str(image_path), "seed": int(seed),
               "shape": list(data.shape), "device": device, "notes": list(src.notes)}
    # what a session needs to find and check the source when the folder is reopened
    from .session import file_digest

    summary["source"] = {**file_digest(image_path), "shape": list(data.shape)}
    if src.sequences:
        summary["sequences"] = list(src.sequences)
        summary["sequence_sources"] = [str(s) for s in src.metadata.get("sources", [image_path])]
        if len(paths) > 1:
            summary["input"] = [str(p) for p in paths]
            summary["source"]["sequences"] = [file_digest(p) for p in paths]
    kw = src.layer_kwargs()
    summary["geometry"] = {"scale": list(kw["scale"]), "translate": list(kw["translate"]),
                           "affine": kw["metadata"].get("affine"),
                           "spacing": [float(v) for v in src.spacing]}
    provenance = {"napari_cuts_version": __version__, "seed": int(seed), "input": str(image_path),
                  "weights": None if weights is None else str(weights),
                  "epochs": epochs, "seconds": seconds}
    common = dict(weights=weights, epochs=epochs, seconds=seconds, seed=seed, device=device,
                  warm_start=warm_start,
                  progress=progress, cancel=cancel, log=log, summary=summary,
                  provenance=provenance, image_path=image_path)
    if is_volume and slices is None:
        _segment_volume_job(src, data, out, max_points=max_points, **common)
    elif is_volume:
        _segment_slices_job(src, data, out, slices, max_points=max_points or MAX_POINTS, **common)
    else:
        _segment_2d_job(src, data, out, max_points=max_points or MAX_POINTS, **common)
    summary["seconds_total"] = round(time.perf_counter() - t_start, 2)
    write_json(out / "run.json", summary)
    return summary


def _train_or_load(train, out, *, weights, summary, log, t_start):
    enc, trained = train()
    summary["trained"] = trained
    summary["warm_start"] = enc.metadata.get("warm_start")
    if trained:
        enc.save(out / "encoder.pt")
        summary["encoder"] = str(out / "encoder.pt")
    summary["seconds_training"] = round(time.perf_counter() - t_start, 2)
    return enc


def _spacing_2d(src) -> tuple:
    """The in-plane pixel size of a 2D input (mm where the file says, else 1)."""
    sp = [float(v) for v in getattr(src, "spacing", ())][-2:]
    return tuple(sp) if len(sp) == 2 and all(v > 0 for v in sp) else (1.0, 1.0)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    from .fileutil import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)


def _segment_2d_job(src, data, out, *, max_points, weights, epochs, seconds, seed, device,
                    warm_start, progress, cancel, log, summary, provenance, image_path) -> None:
    from .io import write_labels
    from .prompts import save_prompt_data

    p = plan(data.shape, max_points)
    log(f"{Path(image_path).name}: {' x '.join(map(str, data.shape))}; estimated peak memory "
        f"~{p.estimated_mb:.0f} MB, segmentation ~{p.estimated_seconds:.0f} s after "
        f"training{'' if weights is None else ' (weights loaded)'}.")
    check_fits(p)
    t0 = time.perf_counter()
    enc = _train_or_load(
        lambda: get_encoder([data], weights=weights, epochs=epochs, seconds=seconds, seed=seed,
                            device=device, warm_start=warm_start, progress=_stage(progress, "training"), cancel=cancel),
        out, weights=weights, summary=summary, log=log, t_start=t0)
    res = segment_image(enc, data, seed=seed, max_points=max_points,
                        progress=_stage(progress, "segmenting"), cancel=cancel)
    for note in res.notes:
        log(note)
    hier = res.hierarchy
    hier.metadata.update({"input": str(image_path)})
    hier.save(out / "hierarchy.npz")
    save_prompt_data(out, image=check_image(data), spacing=_spacing_2d(src))
    pers = hier.persistent()
    _save_npy(out / "persistent.npy", pers)
    write_labels(out / "persistent.png", pers, provenance=None)
    if src.format in ("nifti", "dicom"):
        write_labels(out / "persistent.nii.gz", pers, like=src, provenance=provenance)
    _figure_levels(np.asarray(check_image(data)), hier, out / "levels.png")
    summary.update({"n_levels": int(hier.n_levels),
                    "n_clusters": [int(c) for c in hier.n_clusters],
                    "pool": res.pool, "notes": summary["notes"] + res.notes,
                    "seconds_embed": round(res.seconds["embed"], 2),
                    "seconds_condense": round(res.seconds["condense"], 2)})


def _segment_volume_job(src, data, out, *, max_points, weights, epochs, seconds, seed, device,
                        warm_start, progress, cancel, log, summary, provenance, image_path) -> None:
    from .io import write_labels
    from .prompts import save_prompt_data
    from .volume import MAX_VOLUME_POINTS, check_volume, estimate_note, volume_plan

    vol = check_volume(data, Path(image_path).name)
    spacing = tuple(float(v) for v in src.spacing[:3])
    p = volume_plan(vol.shape, spacing, max_points or MAX_VOLUME_POINTS)
    log(f"{Path(image_path).name}: volume {' x '.join(map(str, vol.shape[:3]))} "
        f"({' x '.join(f'{v:g}' for v in spacing)} mm); {estimate_note(p)}"
        f"{'' if weights is None else ' (weights loaded)'}.")
    check_fits_volume(p)
    t0 = time.perf_counter()

    def train():
        if weights is not None:
            return get_encoder(None, weights=weights, device=device)
        return train_volume_encoder(vol, spacing=spacing, max_points=p.points, epochs=epochs,
                                    seconds=seconds, seed=seed, device=device,
                                    progress=_stage(progress, "training"), cancel=cancel), True

    enc = _train_or_load(train, out, weights=weights, summary=summary, log=log, t_start=t0)
    res = segment_volume(enc, vol, spacing=spacing, seed=seed, max_points=p.points,
                         progress=_stage(progress, "segmenting"), cancel=cancel)
    for note in res.notes:
        log(note)
    hier = res.hierarchy
    hier.metadata.update({"input": str(image_path)})
    t1 = time.perf_counter()
    hier.save(out / "hierarchy.npz")
    save_prompt_data(out, image=vol, spacing=spacing)
    pers = hier.persistent()
    _save_npy(out / "persistent.npy", pers)
    write_labels(out / "persistent.nii.gz", pers, like=src, provenance=provenance)
    if src.format == "dicom":
        try:
            write_labels(out / "persistent.dcm", pers, like=src, provenance=provenance)
        except Exception as exc:  # noqa: BLE001 - the NIfTI is written; say why the SEG is not
            log(f"persistent.dcm not written: {exc}")
    _figure_volume_levels(vol, hier, out / "levels.png", spacing=spacing)
    summary.update({"volume": True, "n_levels": int(hier.n_levels),
                    "n_clusters": [int(c) for c in hier.n_clusters],
                    "encoder_context_slices": int(enc.metadata.get("context_slices", 0) or 0),
                    "pools": list(res.pool), "grid_shape": list(p.grid_shape),
                    "notes": summary["notes"] + res.notes,
                    "seconds_embed": round(res.seconds["embed"], 2),
                    "seconds_smooth": round(res.seconds.get("smooth", 0.0), 2),
                    "seconds_condense": round(res.seconds["condense"], 2),
                    "seconds_refine": round(res.seconds.get("refine", 0.0), 2),
                    "seconds_write": round(time.perf_counter() - t1, 2),
                    "guided_smoothing": hier.metadata.get("guided_smoothing")})


def _segment_slices_job(src, data, out, slices, *, max_points, weights, epochs, seconds, seed,
                        device, warm_start, progress, cancel, log, summary, provenance, image_path) -> None:
    from .io import write_labels

    all_slices = volume_slices(data)
    idx = [int(s) for s in slices]
    bad = [i for i in idx if not 0 <= i < len(all_slices)]
    if bad:
        raise InputError(f"slice indices {bad} are outside the volume's {len(all_slices)} slices.")
    work = [i for i in idx if informative(all_slices[i])]
    if not work:
        raise InputError(f"{image_path}: every selected slice is constant; nothing to segment.")
    p = plan(data.shape[1:], max_points)
    log(f"{Path(image_path).name}: {' x '.join(map(str, data.shape))} ({len(work)} slices, one "
        f"by one); estimated peak memory ~{p.estimated_mb:.0f} MB.")
    check_fits(p)
    t0 = time.perf_counter()
    train_imgs = training_subset([all_slices[i] for i in work])
    enc = _train_or_load(
        lambda: get_encoder(train_imgs, weights=weights, epochs=epochs, seconds=seconds, seed=seed,
                            device=device, warm_start=warm_start, progress=_stage(progress, "training"), cancel=cancel),
        out, weights=weights, summary=summary, log=log, t_start=t0)
    pers_vol = np.zeros(data.shape[:3], dtype=np.uint32)
    n_levels = []
    res = None
    for j, i in enumerate(work):
        check_cancel(cancel)
        report(progress, j, len(work), f"segmenting slice {i}")
        res = segment_image(enc, all_slices[i], seed=seed, max_points=max_points, cancel=cancel)
        d = out / "slices" / f"z{i:04d}"
        d.mkdir(parents=True, exist_ok=True)
        res.hierarchy.save(d / "hierarchy.npz")
        pers_vol[i] = res.hierarchy.persistent()
        n_levels.append(int(res.hierarchy.n_levels))
    report(progress, len(work), len(work), "segmenting done")
    write_labels(out / "persistent.nii.gz", pers_vol, like=src, provenance=provenance)
    mid = work[len(work) // 2]
    hier_mid = type(res.hierarchy).load(out / "slices" / f"z{mid:04d}" / "hierarchy.npz")
    _figure_levels(np.asarray(check_image(all_slices[mid])), hier_mid, out / "levels.png")
    summary.update({"slices": work, "n_levels": n_levels})


def _figure_volume_levels(vol: np.ndarray, hier, path: Path, *, spacing=(1.0, 1.0, 1.0),
                          max_panels: int = 6) -> None:
    """The coarse-to-fine figure of a volume: row 1 the middle axial slice (axis 0), row 2
    the middle slice along axis 1 (an orthogonal view, drawn with the voxel aspect)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .fileutil import save_figure
    from .io import label_colours

    counts = np.asarray(hier.n_clusters)
    candidates = [lv for lv in range(hier.n_levels) if 2 <= counts[lv] <= 256] or [hier.n_levels - 1]
    targets = np.geomspace(counts[candidates[-1]], counts[candidates[0]],
                           min(max_panels - 2, len(candidates)))
    picks = sorted({min(candidates, key=lambda lv: abs(np.log(counts[lv]) - np.log(t)))
                    for t in targets}, reverse=True)
    grey = vol[..., 0] if vol.ndim == 4 else vol
    lo, hi = np.percentile(grey, [0.5, 99.5])
    disp = np.clip((grey - lo) / max(hi - lo, 1e-6), 0, 1)
    z0, y0 = vol.shape[0] // 2, vol.shape[1] // 2
    views = [("axial z=%d" % z0, lambda a: a[z0], spacing[1] / spacing[2]),
             ("orthogonal y=%d" % y0, lambda a: a[:, y0], spacing[0] / spacing[2])]
    maps = [(f"level {lv}: {int(counts[lv])} clusters", hier.labels(lv)) for lv in picks]
    maps.append(("persistent structures", hier.persistent()))
    ncol = 1 + len(maps)
    fig, axes = plt.subplots(2, ncol, figsize=(2.5 * ncol, 5.4), dpi=110, squeeze=False)
    for r, (vname, cut, aspect) in enumerate(views):
        base = cut(disp)
        if r == 1:
            base = base[::-1]
        axes[r, 0].imshow(base, cmap="gray", aspect=aspect, interpolation="nearest")
        axes[r, 0].set_title(vname, fontsize=8)
        for c, (title, lab) in enumerate(maps, start=1):
            lab2 = cut(lab).astype(np.int64)
            if r == 1:
                lab2 = lab2[::-1]
            table = label_colours(int(lab2.max()) + 1)[1:].astype(np.float32) / 255.0
            over = 0.5 * base[..., None] + 0.5 * table[lab2]
            axes[r, c].imshow(over, aspect=aspect, interpolation="nearest")
            if r == 0:
                axes[r, c].set_title(title, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("CUTS on a volume: one hierarchy, coarse (left) to fine (right)", fontsize=9)
    save_figure(fig, path)


def _stage(progress: Progress, name: str) -> Progress:
    """A progress callback that prefixes messages with the stage name."""
    if progress is None:
        return None

    def cb(done, total, message):
        progress(done, total, f"{name}: {message}")

    return cb


def as_dict(obj) -> dict:
    """Dataclass to a JSON-friendly dict."""
    return json.loads(json.dumps(asdict(obj), default=str))


__all__ = ["MAX_POINTS", "Plan", "plan", "SegmentResult", "get_encoder", "segment_image",
           "segment_volume", "train_volume_encoder", "volume_grid", "volume_slices",
           "training_subset", "run_segment", "as_image_list"]
