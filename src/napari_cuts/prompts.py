"""Objects as prompts: :func:`segment_from_prompts` and the data a folder keeps for it.

A ``segment`` output folder, a ``batch`` input's folder and a widget session folder
hold ``hierarchy.npz`` and ``prompts.npz``: the image on the hierarchy's grid, each
channel scaled to [0, 1] between its 0.5 and 99.5 percentiles (float16), and the grid
spacing in mm. :func:`segment_from_prompts` needs nothing else; the solver itself is
:mod:`napari_cuts.prompt_solver`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import InputError, ReadError

__all__ = ["segment_from_prompts", "single_click", "save_prompt_data", "prompt_image",
           "PROMPTS_FILE"]

PROMPTS_FILE = "prompts.npz"
HIERARCHY_FILE = "hierarchy.npz"
#: Folders kept in memory by :func:`segment_from_prompts` (hierarchy and image).
CACHE_FOLDERS = 2
_CACHE: dict = {}


def prompt_image(image: np.ndarray, spatial_ndim: int) -> np.ndarray:
    """``image`` (grid shape, optionally with a trailing channel axis) as float32 with a
    channel axis, each channel scaled to [0, 1] between its 0.5 and 99.5 percentiles
    (:func:`napari_cuts.volume.normalise_volume`)."""
    from .volume import normalise_volume

    x = np.asarray(image)
    if x.ndim == spatial_ndim:
        x = x[..., None]
    if x.ndim != spatial_ndim + 1:
        raise InputError(f"the prompt image must have {spatial_ndim} spatial axes and at most "
                         f"one channel axis, got shape {x.shape}.")
    return normalise_volume(x[None])[0] if spatial_ndim == 2 else normalise_volume(x)


#: The image's border must be at least this share one value (in every channel) for the
#: voxels of that value connected to the border to count as outside the subject.
OUTSIDE_BORDER_SHARE = 0.9


def outside_mask(image: np.ndarray, spatial_ndim: int) -> np.ndarray:
    """The voxels outside the subject: equal, in every channel, to the constant value
    that covers at least :data:`OUTSIDE_BORDER_SHARE` of the image's border (the zero
    around a skull-stripped brain, a fundus photograph's black surround), and connected
    to the border. All False when the border has no such value."""
    from scipy import ndimage

    x = np.asarray(image)
    if x.ndim == spatial_ndim:
        x = x[..., None]
    shape = x.shape[:spatial_ndim]
    faces = np.concatenate([np.concatenate([np.take(x, 0, axis=a).reshape(-1, x.shape[-1]),
                                            np.take(x, -1, axis=a).reshape(-1, x.shape[-1])])
                            for a in range(spatial_ndim)])
    vals, counts = np.unique(faces, axis=0, return_counts=True)
    k = int(np.argmax(counts))
    if counts[k] < OUTSIDE_BORDER_SHARE * faces.shape[0]:
        return np.zeros(shape, dtype=bool)
    same = np.all(x == vals[k], axis=-1)
    lab, _ = ndimage.label(same)
    border = np.unique(np.concatenate([np.concatenate([np.take(lab, 0, axis=a).ravel(),
                                                       np.take(lab, -1, axis=a).ravel()])
                                       for a in range(spatial_ndim)]))
    border = border[border > 0]
    return np.isin(lab, border)


def save_prompt_data(folder, *, image, spacing) -> None:
    """Write ``prompts.npz`` into ``folder``: ``image`` on the hierarchy's grid, 2D or
    3D with or without a trailing channel axis, scaled per channel by
    :func:`prompt_image`; ``spacing`` (mm per spatial axis: its length says whether
    the image is 2D or 3D); and the :func:`outside_mask` of the raw image (packed
    bits), which joins no object unless prompted."""
    from .fileutil import atomic_path

    sp = np.asarray([float(v) for v in spacing], dtype=np.float64)
    nd = sp.shape[0]
    if nd not in (2, 3) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"spacing {tuple(spacing)!r} must give a positive size for each of "
                         "the 2 or 3 spatial axes.")
    unit = prompt_image(image, nd)
    outside = outside_mask(image, nd)
    path = Path(folder) / PROMPTS_FILE
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, image=unit.astype(np.float16), spacing=sp,
                                outside=np.packbits(outside.ravel()),
                                format=np.array(json.dumps({"version": 1})))


def _folder(result) -> Path:
    folder = Path(result).expanduser()
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; pass a segment output folder, a batch "
                         "input's folder or a saved session.")
    if not (folder / HIERARCHY_FILE).is_file():
        if (folder / "slices").is_dir():
            raise InputError(f"{folder} holds slices segmented one by one (--slices); prompts "
                             "need one hierarchy of the whole image: rerun `napari-cuts segment` "
                             "without --slices.")
        raise InputError(f"{folder} has no {HIERARCHY_FILE}; rerun `napari-cuts segment` into it.")
    if not (folder / PROMPTS_FILE).is_file():
        raise InputError(f"{folder} has no {PROMPTS_FILE} (it was written before prompts were "
                         "solved together); rerun `napari-cuts segment` to write it.")
    return folder


def _load(folder: Path):
    """``(hierarchy, image, spacing, contrast scale, outside mask, solver context)`` of
    a folder (:func:`napari_cuts.prompt_solver.solve_context`), cached by path, size and
    time."""
    from .session import load_hierarchy

    hp, pp = folder / HIERARCHY_FILE, folder / PROMPTS_FILE
    sh, spp = hp.stat(), pp.stat()
    key = (str(folder.resolve()), sh.st_size, sh.st_mtime_ns, spp.st_size, spp.st_mtime_ns)
    if key in _CACHE:
        return _CACHE[key]
    hier = load_hierarchy(hp)
    try:
        with np.load(pp, allow_pickle=False) as z:
            image = np.asarray(z["image"], dtype=np.float32)
            spacing = tuple(float(v) for v in z["spacing"])
            n = int(np.prod(image.shape[:-1]))
            outside = (np.unpackbits(z["outside"])[:n].astype(bool).reshape(image.shape[:-1])
                       if "outside" in z.files else np.zeros(image.shape[:-1], dtype=bool))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem
        raise ReadError(f"{pp} cannot be read ({type(exc).__name__}); rerun `napari-cuts "
                        "segment` to write it again.") from None
    if image.shape[:-1] != tuple(hier.shape) or len(spacing) != len(hier.shape):
        raise ReadError(f"{pp} does not match {hp} (image {image.shape[:-1]}, hierarchy "
                        f"{tuple(hier.shape)}); rerun `napari-cuts segment` to write both.")
    from .prompt_solver import contrast_scale, solve_context

    hier.prepare_connected()
    context = solve_context(hier, outside)
    while len(_CACHE) >= CACHE_FOLDERS:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = (hier, image, spacing, contrast_scale(image), outside, context)
    return _CACHE[key]


def _points(points, shape, name: str) -> list:
    out = []
    for p in points if points is not None else ():
        try:
            idx = tuple(int(round(float(v))) for v in np.asarray(p, dtype=np.float64).ravel())
        except (TypeError, ValueError):
            raise InputError(f"{name} prompt {p!r} is not a tuple of numbers.") from None
        if len(idx) != len(shape):
            raise InputError(f"{name} prompt {p!r} has {len(idx)} coordinates; this image needs "
                             f"{len(shape)} ({'(z, y, x)' if len(shape) == 3 else '(y, x)'}).")
        if not all(0 <= i < n for i, n in zip(idx, shape)):
            raise InputError(f"{name} prompt {p!r} lies outside the "
                             f"{' x '.join(map(str, shape))} image.")
        out.append(idx)
    return out


def _scribbles(scribbles, shape) -> Optional[np.ndarray]:
    if scribbles is None:
        return None
    s = np.asarray(scribbles)
    if s.shape != tuple(shape):
        raise InputError(f"scribbles of shape {s.shape} do not match the image's "
                         f"{' x '.join(map(str, shape))} grid.")
    if s.dtype.kind not in "uib":
        raise InputError(f"scribbles must be integers (0 none, 1 object, 2 background), got {s.dtype}.")
    bad = np.setdiff1d(np.unique(s), [0, 1, 2])
    if bad.size:
        raise InputError(f"scribbles hold the value(s) {bad.tolist()}; use 0 (none), 1 (object) "
                         "and 2 (background).")
    return s.astype(np.uint8, copy=False)


def single_click(hier, positive, negative=(), has_scribbles: bool = False,
                 level: Optional[int] = None) -> Optional[np.ndarray]:
    """The answer to one positive click and nothing else (duplicates count once): the
    tool's click (:meth:`~napari_cuts.hierarchy.Hierarchy.click_mask`), or the connected
    structure at ``level`` (clipped to the hierarchy's levels). None for other prompts."""
    pos = {tuple(int(round(float(v))) for v in p) for p in positive}
    if len(pos) != 1 or len(negative) or has_scribbles:
        return None
    p = next(iter(pos))
    if level is None:
        return hier.click_mask(p)
    return hier.structure(p, min(int(level), hier.n_levels - 1), connected=True)


def segment_from_prompts(result, positive: Sequence = (), negative: Sequence = (), *,
                         scribbles=None, level: Optional[int] = None) -> np.ndarray:
    """The object's bool mask from all of its prompts.

    Parameters
    ----------
    result : str or Path
        A ``segment`` output folder, a ``batch`` input's folder or a session folder
        (``hierarchy.npz`` and ``prompts.npz``; nothing outside it is read).
    positive, negative : sequences of index tuples
        ``(y, x)`` for 2D images (RGB included), ``(z, y, x)`` for volumes, on the grid
        of ``hierarchy.npz`` ``labels[0]``; floats are rounded; duplicates allowed.
    scribbles : int array of that grid's shape, optional
        0 none, 1 object, 2 background (painted voxels).
    level : int, optional
        The hierarchy level that sets the scale (the widget passes the slider's). None:
        one positive click alone gives the tool's click
        (:meth:`~napari_cuts.hierarchy.Hierarchy.click_mask`); with more prompts the scale
        is the level of the most persistent positive click
        (:func:`napari_cuts.prompt_solver.hierarchy_prior`).

    Returns
    -------
    (H, W) or (Z, Y, X) bool array. Empty without a positive prompt. One positive click
    and nothing else gives exactly the connected structure under it (at ``level``, or
    at the tool's own level). More prompts are solved together
    (:func:`napari_cuts.prompt_solver.solve`): every positive prompt is in the mask and
    every negative one out; the answer does not depend on the prompts' order. The
    constant surround of the image (:func:`outside_mask`) joins no such object unless
    prompted.

    Raises :class:`~napari_cuts.errors.InputError` naming the prompt that is outside the
    image, scribbles of the wrong shape or values, a prompt both positive and negative,
    or a folder without what the solver needs.
    """
    from .prompt_solver import make_seeds, solve

    folder = _folder(result)
    from .session import load_hierarchy

    hier = load_hierarchy(folder / HIERARCHY_FILE)
    shape = tuple(hier.shape)
    pos = _points(positive, shape, "positive")
    neg = _points(negative, shape, "negative")
    scr = _scribbles(scribbles, shape)
    both = sorted(set(pos) & set(neg))
    if both:
        raise InputError(f"the point {both[0]} is both a positive and a negative prompt; remove "
                         "one of them.")
    if scr is not None:
        for p in pos:
            if scr[p] == 2:
                raise InputError(f"the positive prompt {p} lies on a background scribble.")
        for p in neg:
            if scr[p] == 1:
                raise InputError(f"the negative prompt {p} lies on an object scribble.")
    has_scribble = scr is not None and bool(scr.any())
    if not pos and not (has_scribble and (scr == 1).any()):
        return np.zeros(shape, dtype=bool)
    one = single_click(hier, pos, neg, has_scribble, level)
    if one is not None:
        return one
    if level is not None and not -hier.n_levels <= int(level) < hier.n_levels:
        raise InputError(f"level {level} is out of range; this hierarchy has levels "
                         f"0..{hier.n_levels - 1}.")
    hier, image, spacing, scale, outside, context = _load(folder)
    seeds = make_seeds(shape, spacing, pos, neg, scr if has_scribble else None)
    return solve(hier, image, spacing, seeds, level, scale, outside=outside, context=context)
