"""The one path from images to hierarchies, shared by the CLI and the napari widget.

This module holds the 2D path (:func:`plan`, :func:`segment_image`, the warm-started
encoder of :func:`get_encoder`) and the ``napari-cuts segment`` job
(:func:`segment`); the volume path lives in :mod:`napari_cuts.pipeline_volume` and
what both share in :mod:`napari_cuts.pipeline_common`. Every name of those two modules
that other code uses is importable from here.

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
from .images import (Cancel, CheckedImages, Progress, as_image_list, check_cancel, check_image,
                     checked_list, report)
# the shared parts and the volume path, re-exported: napari_cuts.pipeline.<name> for all
from .pipeline_common import (IMAGE_WEIGHT, SegmentResult, available_memory_mb, in_parallel,
                              seconds_of, clustering_features, informative, load_weights,
                              save_npy, stage, start_and_steps,
                              train_or_load)  # noqa: F401
from .pipeline_volume import (VOLUME_INPUT, check_fits_volume, refined_hierarchy,  # noqa: F401
                              segment_volume, segment_volume_job, smooth_embedding_columns,
                              train_volume_encoder, volume_grid, volume_training_slices)

#: Condensation runs on at most this many points; larger images are condensed on a
#: grid of block means of their embeddings and the labels mapped back guided by the
#: image (:func:`refined_hierarchy`).
MAX_POINTS = 512 * 512


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


#: Crops per training step when a 2D image fine-tunes the packaged weights for a step
#: budget (from scratch, and for volumes: ``encoder_network.DEFAULTS["batch_size"]``).
WARM_CROPS_PER_STEP = 2


def get_encoder(images, *, weights=None, steps=None, epochs=None, seconds=None, seed: int = 0,
                device: str = "auto", progress: Progress = None, cancel: Cancel = None,
                warm_start=None):
    """Load weights (``weights`` is a path or an Encoder) or train an encoder on ``images``.

    The budget: ``steps`` (at most that many, ending early once the loss has settled),
    ``epochs`` or ``seconds``; with none, :func:`napari_cuts.budget.default_steps` of the
    images' pixels and channels. ``warm_start`` decides where training starts:

    * ``None`` (default): from the packaged generic weights for the images' channel
      count (:func:`napari_cuts.encoder.packaged_weights`) for a budget in steps (given
      or default), from scratch for a budget in epochs or seconds; from scratch too
      where the package ships no weights for that channel count (it falls back, it does
      not fail);
    * ``True``: from the packaged weights whatever the budget (from scratch where
      there are none);
    * ``False``: from scratch, as in the paper;
    * a path or an Encoder: from those weights (a channel mismatch raises
      :class:`~napari_cuts.errors.WeightsError`).

    Fine-tuning the packaged weights for a step budget draws
    :data:`WARM_CROPS_PER_STEP` crops a step instead of the default
    ``encoder_network.DEFAULTS["batch_size"]``.

    ``encoder.metadata["warm_start"]`` records the start point (file, sha256) or None;
    ``metadata["steps"]`` the steps trained, which ``steps=`` replays.
    Returns ``(encoder, trained)``.
    """
    from .encoder import packaged_weights, train_encoder

    if weights is not None:
        return load_weights(weights, device), False
    stack = checked_list(images)     # as_image_list, unless the pipeline checked them already
    init, steps = start_and_steps(warm_start, lambda: packaged_weights(stack[0].shape[-1]),
                                  [im.shape for im in stack], ndim=2, steps=steps,
                                  epochs=epochs, seconds=seconds)
    # fine-tuning the packaged weights needs updates more than data per update: two
    # crops a step keep the retina's click Dice within 0.02 and halve the time
    # (docs/decisions/0013)
    extra = {"batch_size": WARM_CROPS_PER_STEP} if init is not None and steps is not None else {}
    enc = train_encoder(CheckedImages(stack), steps=steps, epochs=epochs, seconds=seconds,
                        seed=seed,
                        device=device, progress=progress, cancel=cancel, init=init, **extra)
    return enc, True


def segment_image(encoder, image, *, seed: int = 0, max_points: int = MAX_POINTS,
                  progress: Progress = None, cancel: Cancel = None,
                  image_weight: float = IMAGE_WEIGHT, use_embeddings: bool = True,
                  **condense_params) -> SegmentResult:
    """Embed one 2D image ``(H, W[, C])`` and condense it into a coarse-to-fine hierarchy.

    For the ablations: ``use_embeddings=False`` condenses the encoder-normalised image
    channels alone (no network), ``image_weight=0`` the unit embeddings alone.

    Checks ``image`` (:func:`~napari_cuts.images.check_image`), plans (:func:`plan`) and
    checks the plan against the free memory (:func:`check_fits`), then segments the
    checked image without checking it again."""
    img = check_image(image)
    p = plan(img.shape, max_points)
    check_fits(p)
    return _segment_image(encoder, img, p, seed=seed, progress=progress, cancel=cancel,
                          image_weight=image_weight, use_embeddings=use_embeddings,
                          **condense_params)


def _segment_image(encoder, img: np.ndarray, p: Plan, *, seed: int = 0,
                   progress: Progress = None, cancel: Cancel = None,
                   image_weight: float = IMAGE_WEIGHT, use_embeddings: bool = True,
                   **condense_params) -> SegmentResult:
    """:func:`segment_image` of an image ``img`` that :func:`check_image` has passed
    (float32 ``(H, W, C)``) with its plan ``p`` (the memory already checked): the image is
    scaled by the encoder's percentiles once, and the embedding and the image channels
    condensation sees both come from that one scaling."""
    from .condensation import condense
    from .encoder import embed
    from .encoder_embedding import _channels_last, _embed_scaled, _reads_as_volume, _scaled

    times = {}
    t0 = time.perf_counter()
    report(progress, 0, 2, "embedding")
    if use_embeddings and _reads_as_volume(encoder, img):
        # a volume encoder reads this array as a volume: embed() answers as it always has
        emb = embed(encoder, img, pool=p.pool, cancel=cancel)
        x = _scaled(encoder, img)
    else:
        x = _scaled(encoder, img)
        emb = _embed_scaled(encoder, x, pool=p.pool, cancel=cancel) if use_embeddings else None
    times["embed"] = time.perf_counter() - t0
    check_cancel(cancel)

    def cond_progress(done, total, message):
        report(progress, 1, 2, f"condensing: {message}")

    t0 = time.perf_counter()
    full01 = _channels_last(x)          # normalised_image(encoder, img), from the same scaling
    del x
    img01 = block_mean(full01, p.pool)
    if not use_embeddings:
        w = image_weight if image_weight > 0 else IMAGE_WEIGHT
        feats = ((w / np.sqrt(img01.shape[-1])) * img01).astype(np.float32)
    elif image_weight > 0:
        feats = clustering_features(emb, img01, image_weight)
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
                          "encoder": {k: encoder.metadata.get(k) for k in
                                      ("in_channels", "seed", "version") if k in encoder.metadata}})
    report(progress, 2, 2, "done")
    return SegmentResult(hier, emb, p.pool, list(p.notes), times, feats)


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


def segment(image_path, out_dir, *, weights=None, steps=None, epochs=None, seconds=None,
                seed: int = 0,
                device: str = "auto", max_points: Optional[int] = None, slices=None,
                progress: Progress = None, cancel: Cancel = None, log=print,
                sequences: Optional[bool] = None, warm_start=None) -> dict:
    """Segment an image file, a volume or co-registered sequences into ``out_dir``: read,
    train or load, condense, write the outputs. The one entry for 2D, volumes and
    sequences, and what ``napari-cuts segment`` runs.

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
    seconds_read = time.perf_counter() - t_start
    out = make_output_dir(out_dir)
    for note in src.notes:
        log(note)
    data = np.asarray(src.data)
    # (Z, Y, X), (N, H, W, 3), (Z, Y, X, C) sequences; not (H, W, 3) or (Y, X, C) sequences
    is_volume = src.ndim_spatial == 3
    summary = {"napari_cuts_version": __version__, "input": str(image_path), "seed": int(seed),
               "shape": list(data.shape), "device": device, "notes": list(src.notes),
               "seconds_read": round(seconds_read, 2)}
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
                  "steps": steps, "epochs": epochs, "seconds": seconds}
    common = dict(weights=weights, steps=steps, epochs=epochs, seconds=seconds, seed=seed,
                  device=device,
                  warm_start=warm_start,
                  progress=progress, cancel=cancel, log=log, summary=summary,
                  provenance=provenance, image_path=image_path)
    if is_volume and slices is None:
        segment_volume_job(src, data, out, max_points=max_points, **common)
    elif is_volume:
        _segment_slices_job(src, data, out, slices, max_points=max_points or MAX_POINTS, **common)
    else:
        _segment_2d_job(src, data, out, max_points=max_points or MAX_POINTS, **common)
    summary["seconds_total"] = round(time.perf_counter() - t_start, 2)
    write_json(out / "run.json", summary)
    return summary


def _spacing_2d(src) -> tuple:
    """The in-plane pixel size of a 2D input (mm where the file says, else 1)."""
    sp = [float(v) for v in getattr(src, "spacing", ())][-2:]
    return tuple(sp) if len(sp) == 2 and all(v > 0 for v in sp) else (1.0, 1.0)


def _segment_2d_job(src, data, out, *, max_points, weights, steps, epochs, seconds, seed, device,
                    warm_start, progress, cancel, log, summary, provenance, image_path) -> None:
    from .io import write_labels
    from .prompts import save_prompt_data

    # the one check, plan and memory check of this input; every stage below trusts them
    image = check_image(data)
    p = plan(image.shape, max_points)
    log(f"{Path(image_path).name}: {' x '.join(map(str, data.shape))}; estimated peak memory "
        f"~{p.estimated_mb:.0f} MB, segmentation ~{p.estimated_seconds:.0f} s after "
        f"training{'' if weights is None else ' (weights loaded)'}.")
    check_fits(p)
    t0 = time.perf_counter()
    enc = train_or_load(
        lambda: get_encoder(CheckedImages([image]), weights=weights, steps=steps, epochs=epochs,
                            seconds=seconds, seed=seed,
                            device=device, warm_start=warm_start,
                            progress=stage(progress, "training"), cancel=cancel),
        out, summary=summary, t_start=t0)
    res = _segment_image(enc, image, p, seed=seed,
                         progress=stage(progress, "segmenting"), cancel=cancel)
    for note in res.notes:
        log(note)
    hier = res.hierarchy
    hier.metadata.update({"input": str(image_path)})
    t1 = time.perf_counter()

    def files():
        hier.save(out / "hierarchy.npz")
        save_prompt_data(out, image=image, spacing=_spacing_2d(src))
        pers = hier.persistent()
        save_npy(out / "persistent.npy", pers)
        write_labels(out / "persistent.png", pers, provenance=None)
        if src.format in ("nifti", "dicom"):
            write_labels(out / "persistent.nii.gz", pers, like=src, provenance=provenance)

    # the figure here, the files on the other core
    fig_seconds, _ = in_parallel(
        lambda: seconds_of(lambda: _figure_levels(np.asarray(image), hier, out / "levels.png")),
        files)
    t2 = time.perf_counter()
    summary.update({"n_levels": int(hier.n_levels),
                    "n_clusters": [int(c) for c in hier.n_clusters],
                    "pool": res.pool, "notes": summary["notes"] + res.notes,
                    "seconds_embed": round(res.seconds["embed"], 2),
                    "seconds_condense": round(res.seconds["condense"], 2),
                    "seconds_map_back": round(res.seconds.get("refine", 0.0), 2),
                    "seconds_write": round(t2 - t1, 2),       # files and figure together
                    "seconds_figures": round(fig_seconds, 2)})


def _segment_slices_job(src, data, out, slices, *, max_points, weights, steps, epochs, seconds,
                        seed,
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
    p = plan(data.shape[1:], max_points)     # one plan: every slice has the same size
    log(f"{Path(image_path).name}: {' x '.join(map(str, data.shape))} ({len(work)} slices, one "
        f"by one); estimated peak memory ~{p.estimated_mb:.0f} MB.")
    check_fits(p)
    # each slice is checked once, when first needed: the training subset before training
    # (kept until it is segmented), the others as they come; the middle one is kept for
    # the figure
    checked: dict[int, np.ndarray] = {}
    mid = work[len(work) // 2]

    def slice_image(i: int, keep: bool = False) -> np.ndarray:
        keep = keep or i == mid
        img = checked.get(i) if keep else checked.pop(i, None)
        if img is None:
            img = check_image(all_slices[i], name=f"slice {i}")
            if keep:
                checked[i] = img
        return img

    t0 = time.perf_counter()
    train_imgs = None
    if weights is None:
        train_imgs = CheckedImages([slice_image(i, keep=True) for i in training_subset(work)])
    enc = train_or_load(
        lambda: get_encoder(train_imgs, weights=weights, steps=steps, epochs=epochs,
                            seconds=seconds, seed=seed,
                            device=device, warm_start=warm_start,
                            progress=stage(progress, "training"), cancel=cancel),
        out, summary=summary, t_start=t0)
    train_imgs = None
    pers_vol = np.zeros(data.shape[:3], dtype=np.uint32)
    n_levels = []
    res = None
    for j, i in enumerate(work):
        check_cancel(cancel)
        report(progress, j, len(work), f"segmenting slice {i}")
        res = _segment_image(enc, slice_image(i), p, seed=seed, cancel=cancel)
        d = out / "slices" / f"z{i:04d}"
        d.mkdir(parents=True, exist_ok=True)
        res.hierarchy.save(d / "hierarchy.npz")
        pers_vol[i] = res.hierarchy.persistent()
        n_levels.append(int(res.hierarchy.n_levels))
    report(progress, len(work), len(work), "segmenting done")
    write_labels(out / "persistent.nii.gz", pers_vol, like=src, provenance=provenance)
    hier_mid = type(res.hierarchy).load(out / "slices" / f"z{mid:04d}" / "hierarchy.npz")
    _figure_levels(slice_image(mid), hier_mid, out / "levels.png")
    summary.update({"slices": work, "n_levels": n_levels})


def as_dict(obj) -> dict:
    """Dataclass to a JSON-friendly dict."""
    return json.loads(json.dumps(asdict(obj), default=str))


__all__ = ["MAX_POINTS", "Plan", "plan", "SegmentResult", "get_encoder", "segment_image",
           "segment_volume", "train_volume_encoder", "volume_grid", "volume_slices",
           "training_subset", "segment", "as_image_list"]
