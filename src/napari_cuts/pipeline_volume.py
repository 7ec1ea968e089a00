"""The volume path: one volume ``(Z, Y, X[, C])`` to ONE hierarchy.

A volume is condensed on its working grid (:func:`volume_grid`, block means of the
volume scaled by its own percentiles, :func:`napari_cuts.volume.volume_plan`), embedded
slice by slice by a 2.5D encoder (:func:`train_volume_encoder`), its embeddings
smoothed within the image's regions, condensed all at once, and the labels mapped back
to every voxel guided by the image (:func:`refined_hierarchy`).
:func:`segment_volume_job` is the ``napari-cuts segment`` job for a volume.

Import these names from :mod:`napari_cuts.pipeline`, which re-exports them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from . import __version__
from .errors import InputError
from .images import Cancel, CheckedImages, Progress, check_cancel, report
from .pipeline_common import (IMAGE_WEIGHT, SegmentResult, available_memory_mb, in_parallel,
                              seconds_of, clustering_features, informative, load_weights,
                              save_npy, stage, start_and_steps,
                              train_or_load)

#: ``encoder.metadata["volume_input"]`` of volume encoders trained on volumes scaled per
#: channel by their own percentiles (:func:`volume_grid`); an encoder without it gets the
#: raw intensities it was trained on.
VOLUME_INPUT = "per-volume percentiles"


def volume_grid(volume, spacing=None, max_points: Optional[int] = None, *, scaled: bool = True):
    """The working grid of a volume: ``(plan, grid volume (z, y, x, C) float32)``
    (:func:`napari_cuts.volume.volume_plan`, block means of the volume scaled per
    channel to [0, 1] between its own 0.5 and 99.5 percentiles; ``scaled=False``: of
    the raw intensities, for encoders without ``metadata["volume_input"]``).

    The per-volume scaling comes first because MRI intensities have no fixed unit: one
    encoder for a cohort (``batch``, "Apply to all images") would otherwise normalise
    every volume with the percentiles of the volumes it was trained on, and a scan ten
    times brighter would be clipped flat. A volume and a rescaling of it by a power of two
    give the same grid; another positive affine rescaling gives a grid within float
    rounding (about 1e-7), which can tip a near-tied merge of the hierarchy."""
    from .volume import MAX_VOLUME_POINTS, check_volume, volume_plan

    vol = check_volume(volume)
    p = volume_plan(vol.shape, spacing, MAX_VOLUME_POINTS if max_points is None else max_points)
    return p, _working_grid(vol, p, scaled)[0]


def _working_grid(vol: np.ndarray, p, scaled: bool = True):
    """:func:`volume_grid` of a volume that :func:`~napari_cuts.volume.check_volume` has
    passed (float32 ``(Z, Y, X, C)``) with its plan ``p``: ``(grid, vol01)``, ``vol01``
    the volume scaled by its own percentiles (None when not ``scaled``), kept so that the
    labels' mapping back to every voxel (:func:`refined_hierarchy`) scales it no second
    time. Nothing is checked again."""
    from .volume import block_reduce, normalise_volume

    vol01 = normalise_volume(vol) if scaled else None
    return block_reduce(vol01 if scaled else vol, p.pools), vol01


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
                         context: Optional[int] = None, steps=None, epochs=None, seconds=None,
                         seed: int = 0, device: str = "auto", progress: Progress = None,
                         cancel: Cancel = None, warm_start=None, **options):
    """Train a 2.5D encoder on one volume ``(Z, Y, X[, C])``, or several volumes of the
    same channel count (a list), on their working grids (see :mod:`napari_cuts.volume`).

    The budget and the start point follow :func:`napari_cuts.pipeline.get_encoder`:
    with no budget, :func:`napari_cuts.budget.default_steps` of all the volumes' voxels
    and channels, from the packaged volume weights where the package ships them for this
    channel count (:func:`napari_cuts.encoder.packaged_weights` with ``context_slices``).

    Each volume is checked (:func:`~napari_cuts.volume.check_volume`, through
    :func:`volume_grid`); the training slices taken from the checked grids are not
    checked again."""
    from .volume import CONTEXT_SLICES

    k = CONTEXT_SLICES if context is None else int(context)
    vols = volume if isinstance(volume, (list, tuple)) else [volume]
    sps = spacing if isinstance(volume, (list, tuple)) and spacing is not None else [spacing] * len(vols)
    imgs = []
    channels = None
    per = max(8, 64 // len(vols))
    for v, sp in zip(vols, sps):
        _, grid = volume_grid(v, sp, max_points)
        channels = int(grid.shape[-1]) if channels is None else channels
        imgs += volume_training_slices(grid, k, per)
    return _train_volume_encoder(imgs, [np.shape(v) for v in vols], channels, k, steps=steps,
                                 epochs=epochs, seconds=seconds, seed=seed, device=device,
                                 progress=progress, cancel=cancel, warm_start=warm_start,
                                 **options)


def _train_volume_encoder(imgs: list, shapes: list, channels: int, k: int, *, steps=None,
                          epochs=None, seconds=None, seed: int = 0, device: str = "auto",
                          progress: Progress = None, cancel: Cancel = None, warm_start=None,
                          **options):
    """:func:`train_volume_encoder` from the training slices ``imgs`` of checked working
    grids (:func:`volume_training_slices`), the volumes' ``shapes``, their ``channels``
    and the slice context ``k``; the slices go to the encoder as checked images."""
    from .encoder import packaged_weights, train_encoder

    init, steps = start_and_steps(warm_start,
                                  lambda: packaged_weights(channels, context_slices=k),
                                  shapes, ndim=3, steps=steps, epochs=epochs, seconds=seconds)
    enc = train_encoder(CheckedImages(imgs), steps=steps, epochs=epochs, seconds=seconds, seed=seed,
                        device=device, progress=progress, cancel=cancel, init=init,
                        context_slices=k, **options)
    enc.metadata["volume"] = True       # embed() then reads (Z, Y, X[, C]) as a volume
    enc.metadata["volume_input"] = VOLUME_INPUT
    return enc


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


def segment_volume(encoder, volume, *, spacing=None, seed: int = 0,
                   max_points: Optional[int] = None, progress: Progress = None,
                   cancel: Cancel = None, image_weight: float = IMAGE_WEIGHT,
                   use_embeddings: bool = True, **condense_params) -> SegmentResult:
    """Segment a volume ``(Z, Y, X)`` / ``(Z, Y, X, C)`` as ONE object.

    Embeds its working grid slice by slice (with slice context for a 2.5D encoder),
    joins the normalised image, condenses all grid voxels at once (6-connected pre-merge
    weighted by the grid ``spacing``) and maps the labels back: ``hierarchy.labels(l)``
    is ``(Z, Y, X)``, one id one structure across all slices. ``use_embeddings=False``
    condenses the normalised image (with its slice context) alone (the ablation).

    Before condensing, the unit embeddings are smoothed within the image's regions
    (:func:`napari_cuts.volume.guided_smooth`, ``GUIDE_ITERATIONS`` iterations, range
    sigma ``GUIDE_SIGMA``; not for the ablations, whose input is the image alone or the
    embeddings alone).
    ``result.pool`` is the block size per axis; ``result.embeddings`` the grid's
    ``(z, y, x, D)``.

    Checks ``volume`` (:func:`~napari_cuts.volume.check_volume`), plans its working grid
    (:func:`~napari_cuts.volume.volume_plan`) and checks the plan against the free memory
    (:func:`check_fits_volume`), then segments without checking again."""
    from .volume import MAX_VOLUME_POINTS, check_volume, volume_plan

    vol = check_volume(volume)
    t0 = time.perf_counter()
    p = volume_plan(vol.shape, spacing, MAX_VOLUME_POINTS if max_points is None else max_points)
    check_fits_volume(p)
    grid, vol01 = _working_grid(vol, p, scaled=encoder.metadata.get("volume_input") == VOLUME_INPUT)
    return _segment_volume(encoder, vol, p, grid, vol01=vol01, seed=seed, progress=progress,
                           cancel=cancel, image_weight=image_weight,
                           use_embeddings=use_embeddings,
                           times={"grid": time.perf_counter() - t0}, **condense_params)


def _segment_volume(encoder, vol: np.ndarray, p, grid: np.ndarray, *, vol01=None, seed: int = 0,
                    progress: Progress = None, cancel: Cancel = None,
                    image_weight: float = IMAGE_WEIGHT, use_embeddings: bool = True,
                    times: Optional[dict] = None, keep: bool = True,
                    **condense_params) -> SegmentResult:
    """:func:`segment_volume` of a checked volume ``vol`` (float32 ``(Z, Y, X, C)``) with
    its plan ``p`` (the memory already checked) and working ``grid``
    (:func:`_working_grid`, scaled as the encoder expects); ``vol01`` the volume scaled by
    its own percentiles where the grid was made from it (else scaled here if the labels
    are mapped back). Every grid slice is scaled by the encoder's percentiles once, for
    the embedding and the image channels condensation sees alike. ``keep=False`` (the
    ``segment`` job, which writes files only) drops the embeddings once the features
    are made and returns neither: on a brain that is 1.2 GB less at the peak."""
    from .condensation import condense
    from .encoder_embedding import _embed_volume_checked, _volume_input
    from .volume import GUIDE_ITERATIONS, GUIDE_SIGMA, context_stack, estimate_note

    times = dict(times or {})
    k = int(encoder.metadata.get("context_slices", 0) or 0)
    t0 = time.perf_counter()

    def emb_progress(done, total, message):
        report(progress, done, total + max(1, total // 3), message)

    # the encoder's input: the grid with its context slices as channels (for a 2.5D encoder)
    if use_embeddings:
        ctx = _volume_input(encoder, grid)
    else:
        ctx = context_stack(grid, k) if k else grid
    emb, img01 = _embed_volume_checked(encoder, ctx, progress=emb_progress, cancel=cancel,
                                       embed_slices=use_embeddings, keep_scaled=True)
    del ctx
    times["embed"] = time.perf_counter() - t0
    check_cancel(cancel)
    z = grid.shape[0]

    def cond_progress(done, total, message):
        report(progress, z, z + max(1, z // 3), f"condensing: {message}")

    guided = None
    if use_embeddings:
        feats = clustering_features(emb, img01, image_weight)
        if not keep:
            emb = None
        if image_weight > 0:
            report(progress, z, z + max(1, z // 3), "smoothing the embeddings within the image")
            guided = smooth_embedding_columns(feats, img01, GUIDE_ITERATIONS, GUIDE_SIGMA,
                                              spacing=p.grid_spacing, cancel=cancel, times=times)
    else:
        feats = ((image_weight / np.sqrt(img01.shape[-1])) * img01).astype(np.float32)
    condense_params.setdefault("normalize", False)
    t0 = time.perf_counter()
    hier = condense(feats, seed=seed, spacing=p.grid_spacing, progress=cond_progress,
                    cancel=cancel, **condense_params)
    times["condense"] = time.perf_counter() - t0
    if not keep:
        feats = None
    if p.pools != (1, 1, 1):
        t0 = time.perf_counter()
        hier = refined_hierarchy(hier, vol if vol01 is None else vol01, p.pools,
                                 normalised=vol01 is not None)
        times["refine"] = time.perf_counter() - t0
    hier.metadata.update({"napari_cuts_version": __version__, "seed": int(seed),
                          "volume": True, "refined": p.pools != (1, 1, 1), "spacing": list(p.spacing),
                          "pools": list(p.pools), "grid_spacing": list(p.grid_spacing),
                          "image_weight": image_weight, "use_embeddings": bool(use_embeddings),
                          "guided_smoothing": guided,
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
                     metadata=meta, check=False)


def check_fits_volume(p) -> None:
    """Raise :class:`ResourceError` if a volume plan would not fit the free memory."""
    free = available_memory_mb()
    if free is not None and p.estimated_mb > 0.9 * free:
        from .errors import ResourceError

        raise ResourceError(
            f"segmenting a {' x '.join(map(str, p.shape))} volume needs about "
            f"{p.estimated_mb:.0f} MB but only {free:.0f} MB are free; close other programs, "
            "crop the volume, or pass a smaller max_points (--max-points) for a coarser grid.")


def segment_volume_job(src, data, out, *, max_points, weights, steps, epochs, seconds, seed, device,
                       warm_start, progress, cancel, log, summary, provenance, image_path) -> None:
    """The ``segment`` job for a volume (:func:`napari_cuts.pipeline.segment`): plan,
    train a 2.5D encoder (:func:`train_volume_encoder`) or load
    ``weights``, segment, write ``hierarchy.npz``, the persistent map and ``levels.png``."""
    from .io import write_labels
    from .prompts import save_prompt_data
    from .volume import CONTEXT_SLICES, MAX_VOLUME_POINTS, check_volume, estimate_note, volume_plan

    # the one check, plan and memory check of this volume; every stage below trusts them
    vol = check_volume(data, Path(image_path).name)
    spacing = tuple(float(v) for v in src.spacing[:3])
    p = volume_plan(vol.shape, spacing, max_points or MAX_VOLUME_POINTS)
    log(f"{Path(image_path).name}: volume {' x '.join(map(str, vol.shape[:3]))} "
        f"({' x '.join(f'{v:g}' for v in spacing)} mm); {estimate_note(p)}"
        f"{'' if weights is None else ' (weights loaded)'}.")
    check_fits_volume(p)
    grids: dict = {}      # the working grid, made once: training and segmenting share it

    def working_grid(scaled: bool):
        if scaled not in grids:
            t = time.perf_counter()
            grid, vol01 = _working_grid(vol, p, scaled)
            grids[scaled] = (grid, vol01, time.perf_counter() - t)
        return grids[scaled]

    if weights is None:
        working_grid(True)    # seconds_prepare, a stage of its own (loaded weights: after loading)
    t0 = time.perf_counter()

    def train():
        if weights is not None:
            return load_weights(weights, device), False
        imgs = volume_training_slices(working_grid(True)[0], CONTEXT_SLICES)
        return _train_volume_encoder(imgs, [vol.shape], int(vol.shape[-1]), CONTEXT_SLICES,
                                     steps=steps, epochs=epochs, seconds=seconds, seed=seed,
                                     device=device, warm_start=warm_start,
                                     progress=stage(progress, "training"), cancel=cancel), True

    enc = train_or_load(train, out, summary=summary, t_start=t0)
    grid, vol01, grid_seconds = working_grid(enc.metadata.get("volume_input") == VOLUME_INPUT)
    grids.clear()
    res = _segment_volume(enc, vol, p, grid, vol01=vol01, seed=seed,
                          progress=stage(progress, "segmenting"), cancel=cancel,
                          times={"grid": grid_seconds}, keep=False)
    del grid, vol01
    for note in res.notes:
        log(note)
    hier = res.hierarchy
    hier.metadata.update({"input": str(image_path)})
    t1 = time.perf_counter()

    def persistent_files():
        pers = hier.persistent()
        save_npy(out / "persistent.npy", pers)
        write_labels(out / "persistent.nii.gz", pers, like=src, provenance=provenance)
        if src.format == "dicom":
            try:
                write_labels(out / "persistent.dcm", pers, like=src, provenance=provenance)
            except Exception as exc:  # noqa: BLE001 - the NIfTI is written; say why the SEG is not
                log(f"persistent.dcm not written: {exc}")

    # the figure here, the two big compressed files and the persistent map on two
    # threads: zlib releases the GIL, so both cores write
    fig_seconds, _, _ = in_parallel(
        lambda: seconds_of(lambda: _figure_volume_levels(vol, hier, out / "levels.png",
                                                         spacing=spacing)),
        lambda: (hier.save(out / "hierarchy.npz"),
                 save_prompt_data(out, image=vol, spacing=spacing)),
        persistent_files)
    t2 = time.perf_counter()
    summary.update({"volume": True, "n_levels": int(hier.n_levels),
                    "n_clusters": [int(c) for c in hier.n_clusters],
                    "encoder_context_slices": int(enc.metadata.get("context_slices", 0) or 0),
                    "pools": list(res.pool), "grid_shape": list(p.grid_shape),
                    "notes": summary["notes"] + res.notes,
                    "seconds_prepare": round(res.seconds.get("grid", 0.0), 2),
                    "seconds_embed": round(res.seconds["embed"], 2),
                    "seconds_smooth": round(res.seconds.get("smooth", 0.0), 2),
                    "seconds_condense": round(res.seconds["condense"], 2),
                    "seconds_map_back": round(res.seconds.get("refine", 0.0), 2),
                    "seconds_write": round(t2 - t1, 2),      # files and figure together
                    "seconds_figures": round(fig_seconds, 2),
                    "guided_smoothing": hier.metadata.get("guided_smoothing")})


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
