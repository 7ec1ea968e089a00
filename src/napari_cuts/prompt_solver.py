"""The prompt solver: an object's mask from all of its prompts at once.

An object is its prompts: positive and negative seed voxels (clicks and scribbles).
One positive click and nothing else is the tool's click (the connected structure of
the hierarchy under it, :func:`napari_cuts.prompts.segment_from_prompts`). Two or more
prompts are solved together by a random walker with a prior (Grady 2005, "Multilabel
random walker image segmentation using prior models"), on the image's voxels:

* **The prior is a marker cut of the hierarchy** (:func:`hierarchy_prior`). The
  *anchor* is the positive click whose own structure is the most persistent
  (:meth:`~napari_cuts.hierarchy.Hierarchy.click_choice`; ties: the first point in
  sorted order). It brings its connected structure at its scale (the slider's level
  when one is given, else its own click level), shrunk along its lineage to the
  coarsest structure that holds no negative prompt. Every other positive click brings
  the coarsest structure of its lineage, up to the same scale, that holds no negative
  prompt and no piece touching the image border (and, without a given level, is no
  larger than the anchor's).
  Each negative prompt takes out the coarsest structure of its lineage that holds no
  positive prompt. The prior is 1 on what is left, 0 elsewhere. The rule looks at the
  set of prompts, never at their order.
* **The edges come from the image**: voxel neighbours (6 in 3D, 4 in 2D) are joined
  with weight ``exp(-BETA * d^2 / mean d^2) / distance``, ``d^2`` the squared
  difference of the image channels (each in [0, 1]), its mean taken over the whole
  image (:func:`contrast_scale`, so a prompt that moves the solved box leaves the
  weights alone), the distance in units of the finest spacing.
* **The seeds are hard**: a ball of ``SEED_RADIUS`` voxels around each click (1 along
  axes whose spacing exceeds twice the finest) and every scribbled voxel, positive 1,
  negative 0; the faces of the solved box where the prior is 0, and the image's
  constant surround (:func:`napari_cuts.prompts.outside_mask`), count as background.
  The potentials solve ``(L_UU + GAMMA I) x_U = W_US x_S + GAMMA p_U`` by conjugate
  gradients (a symmetric M-matrix). The mask is ``x > 1/2``, restricted to the parts
  connected to a positive prompt, every positive prompt in, every negative one out.

A positive seed can only raise the potentials and a negative one only lower them, so
with the anchor unchanged a further positive prompt never removes voxels and a negative
one never adds any. The measurements behind each choice are in
``docs/decisions/0010-prompt-solver.md``.

Large images are solved on a box around the prior and the seeds (``MARGIN``), at a
stride that keeps it under ``MAX_SOLVE_VOXELS`` voxels, and mapped back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Edge contrast: weights ``exp(-BETA * d^2 / mean(d^2))``, the mean over the image.
BETA = 8.0
#: Pull of the hierarchy prior on every voxel that is not a seed (edge weights <= 1).
GAMMA = 5e-4
#: A click seeds a ball of this radius in voxels (1 along axes whose spacing exceeds
#: twice the finest).
SEED_RADIUS = 2
#: The solved box: the prior's and the seeds' bounding box grown by this fraction of
#: its extent per side, and by at least ``MARGIN_MIN`` voxels.
MARGIN = 0.25
MARGIN_MIN = 4
#: Above this many voxels the box is solved at a stride and the answer upsampled.
MAX_SOLVE_VOXELS = 400_000
#: Conjugate-gradient tolerance (relative residual) and iteration cap.
CG_TOL = 1e-3
CG_MAXITER = 300


@dataclass
class Seeds:
    """The prompts of one object on the image grid.

    ``positive_points``: the positive clicks, sorted index tuples;
    ``positive`` / ``negative``: every seed voxel (click balls and scribbles) as sorted
    unique flat indices, disjoint; ``forced_in`` / ``forced_out``: the voxels the mask
    must hold or leave out (the clicked voxels and the scribbles)."""

    positive_points: list
    positive: np.ndarray
    negative: np.ndarray
    forced_in: np.ndarray
    forced_out: np.ndarray


def click_ball(point, shape, spacing, radius: int = SEED_RADIUS) -> np.ndarray:
    """Flat indices of the ball seeded by a click at ``point``."""
    nd = len(shape)
    fine = float(min(spacing))
    r = [1 if float(s) > 2 * fine else radius for s in spacing]
    lo = [max(0, int(point[a]) - r[a]) for a in range(nd)]
    hi = [min(int(shape[a]), int(point[a]) + r[a] + 1) for a in range(nd)]
    g = np.indices([h - l for l, h in zip(lo, hi)])
    inside = sum(((g[a] + lo[a] - int(point[a])) / max(r[a], 1)) ** 2 for a in range(nd)) <= 1.0
    return np.ravel_multi_index(tuple(g[a][inside] + lo[a] for a in range(nd)), shape)


def make_seeds(shape, spacing, positive, negative, scribbles=None) -> Seeds:
    """:class:`Seeds` from click index tuples and an optional scribble map (0 none,
    1 object, 2 background). Clicked voxels and scribbles win over the balls of the
    other kind; a ball's voxel claimed by both kinds is left free."""
    pos_pts = sorted(set(tuple(int(v) for v in p) for p in positive))
    neg_pts = sorted(set(tuple(int(v) for v in p) for p in negative))
    empty = np.zeros(0, dtype=np.int64)
    flat = lambda pts: (np.array([np.ravel_multi_index(p, shape) for p in pts], dtype=np.int64)  # noqa: E731
                        if pts else empty)
    f_in, f_out = flat(pos_pts), flat(neg_pts)
    if scribbles is not None:
        s = np.asarray(scribbles).ravel()
        f_in = np.union1d(f_in, np.flatnonzero(s == 1))
        f_out = np.union1d(f_out, np.flatnonzero(s == 2))
    balls_p = np.concatenate([click_ball(p, shape, spacing) for p in pos_pts]) if pos_pts else empty
    balls_n = np.concatenate([click_ball(p, shape, spacing) for p in neg_pts]) if neg_pts else empty
    both = np.intersect1d(balls_p, balls_n)
    pos = np.union1d(np.setdiff1d(balls_p, both), f_in)
    neg = np.union1d(np.setdiff1d(balls_n, both), f_out)
    pos = np.setdiff1d(pos, f_out)
    neg = np.setdiff1d(neg, f_in)
    return Seeds(pos_pts, pos, neg, np.unique(f_in), np.unique(f_out))


def _border_regions(reg: np.ndarray) -> np.ndarray:
    """The ids of the base pieces that touch the image's border."""
    faces = []
    for a in range(reg.ndim):
        faces.append(np.take(reg, 0, axis=a).ravel())
        faces.append(np.take(reg, -1, axis=a).ravel())
    return np.unique(np.concatenate(faces))


def hierarchy_prior(hier, seeds: Seeds, level=None) -> np.ndarray:
    """The prior ``(grid shape)`` float32 in {0, 1}: the marker cut of the hierarchy
    described in the module's docstring. Positive scribbles without a click count
    through their first voxel in C order."""
    prior = np.zeros(hier.shape, dtype=np.float32)
    points = list(seeds.positive_points)
    if not points and seeds.forced_in.size:
        points = [tuple(int(c) for c in np.unravel_index(int(seeds.forced_in[0]), hier.shape))]
    if not points:
        return prior
    reg, region_base, *_ = hier._regions()
    flat_reg = reg.ravel()
    neg_regions = np.unique(flat_reg[seeds.forced_out]) if seeds.forced_out.size else np.zeros(0, np.intp)
    pos_regions = np.unique(flat_reg[seeds.forced_in]) if seeds.forced_in.size else np.zeros(0, np.intp)
    stop = np.union1d(neg_regions, np.setdiff1d(_border_regions(reg), pos_regions))
    inside = np.zeros(region_base.shape[0], dtype=bool)
    choice = {}
    for p in points:
        lv, pers = hier.click_choice(p, connected=True)
        if level is not None:
            lv = int(level) % hier.n_levels
        pieces = hier._structure_pieces(p)
        choice[p] = (lv, pers, pieces)
    anchor = min(choice, key=lambda q: (-choice[q][1], q))
    top, _, anchor_pieces = choice[anchor]
    # at the slider's level every click shares the scale; at their own levels the
    # others may not bring a structure larger than the anchor's
    cap = int(anchor_pieces[top][2]) if level is None else int(np.prod(hier.shape))
    for p in points:
        lv, _, pieces = choice[p]
        if p != anchor:
            lv = min(lv, top)
        while lv >= 0:
            members = pieces[lv][3]
            if p == anchor:
                ok = not np.isin(members, neg_regions).any()
            else:
                ok = pieces[lv][2] <= cap and not np.isin(members, stop).any()
            if ok:
                inside[members] = True
                break
            lv -= 1
    if seeds.forced_out.size:
        done = set()
        for k in seeds.forced_out:
            r = int(flat_reg[k])
            if r in done:
                continue
            done.add(r)
            pieces = hier._structure_pieces(np.unravel_index(int(k), hier.shape))
            out = None
            for lv in range(hier.n_levels):
                if np.isin(pieces[lv][3], pos_regions).any():
                    break
                out = pieces[lv][3]
            if out is not None:
                inside[out] = False
    return np.take(inside.astype(np.float32), reg)


def _box(prior: np.ndarray, seed_idx: np.ndarray, shape) -> tuple:
    """The solved box: slices around the prior's support and the seeds."""
    nd = len(shape)
    coords = np.unravel_index(seed_idx, shape)
    sup = np.nonzero(prior > 0)
    box = []
    for a in range(nd):
        vals = [np.asarray(coords[a], dtype=np.int64)]
        if sup[a].size:
            vals.append(np.array([sup[a].min(), sup[a].max()], dtype=np.int64))
        v = np.concatenate(vals)
        lo, hi = int(v.min()), int(v.max()) + 1
        m = max(MARGIN_MIN, int(np.ceil(MARGIN * (hi - lo))))
        box.append(slice(max(0, lo - m), min(int(shape[a]), hi + m)))
    return tuple(box)


def _stride(box_shape) -> int:
    n = float(np.prod(box_shape))
    s = 1
    while n / s ** len(box_shape) > MAX_SOLVE_VOXELS:
        s += 1
    return s


def contrast_scale(image: np.ndarray) -> float:
    """The mean squared difference of neighbouring voxels over the whole image
    ``(..., C)``: the unit of the edge weights, the same for every box of one image (so
    that a prompt that moves the box does not change the weights)."""
    x = np.asarray(image, dtype=np.float32)
    nd = x.ndim - 1
    total, count = 0.0, 0
    for a in range(nd):
        if x.shape[a] < 2:
            continue
        d = np.diff(x, axis=a)
        total += float(np.sum(d.astype(np.float64) ** 2))
        count += int(np.prod(d.shape[:-1]))
    return total / count if count and total > 0 else 1.0


def _edges(features: np.ndarray, spacing, scale: float):
    """Edges of the voxel grid ``features (..., F)``: flat indices ``i``, ``j`` and the
    weights, ``exp(-BETA * d^2 / scale) / distance``."""
    shape = features.shape[:-1]
    nd = len(shape)
    idx = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    ii, jj, dd, ss = [], [], [], []
    fine = float(min(spacing))
    for a in range(nd):
        if shape[a] < 2:
            continue
        lo = [slice(None)] * nd
        hi = [slice(None)] * nd
        lo[a], hi[a] = slice(0, -1), slice(1, None)
        d2 = np.sum((features[tuple(hi)] - features[tuple(lo)]) ** 2, axis=-1, dtype=np.float32)
        ii.append(idx[tuple(lo)].ravel())
        jj.append(idx[tuple(hi)].ravel())
        dd.append(d2.ravel())
        ss.append(np.full(d2.size, float(spacing[a]) / fine, dtype=np.float32))
    if not ii:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(0, np.float64)
    i, j, d2, dist = (np.concatenate(v) for v in (ii, jj, dd, ss))
    return i, j, np.exp(-BETA * d2 / scale) / dist + 1e-6


def random_walk(features: np.ndarray, spacing, seed_pos: np.ndarray, seed_neg: np.ndarray,
                prior: np.ndarray, scale: float) -> np.ndarray:
    """Potentials ``(grid shape)`` in [0, 1] of the random walker with a prior:
    ``features`` (..., F), seeds as flat indices into the grid, ``prior`` the grid's
    prior of the object, ``scale`` the unit of squared differences
    (:func:`contrast_scale`)."""
    from scipy.sparse import coo_matrix, diags
    from scipy.sparse.linalg import LinearOperator, cg

    shape = features.shape[:-1]
    n = int(np.prod(shape))
    i, j, w = _edges(features, spacing, scale)
    W = coo_matrix((np.concatenate([w, w]), (np.concatenate([i, j]), np.concatenate([j, i]))),
                   shape=(n, n)).tocsr()
    deg = np.asarray(W.sum(axis=1)).ravel()
    x = prior.ravel().astype(np.float64)
    fixed = np.zeros(n, dtype=bool)
    fixed[seed_neg] = True
    fixed[seed_pos] = True
    x[seed_neg] = 0.0
    x[seed_pos] = 1.0
    free = np.flatnonzero(~fixed)
    if free.size == 0:
        return x.reshape(shape)
    Wf = W[free]
    A = (diags(deg[free] + GAMMA) - Wf[:, free]).tocsr()
    b = Wf[:, np.flatnonzero(fixed)] @ x[fixed] + GAMMA * x[free]
    dinv = 1.0 / (deg[free] + GAMMA)
    M = LinearOperator(A.shape, matvec=lambda v: dinv * v, dtype=np.float64)
    sol, _ = cg(A, b, x0=x[free].copy(), rtol=CG_TOL, maxiter=CG_MAXITER, M=M)
    x[free] = np.clip(sol, 0.0, 1.0)
    return x.reshape(shape)


def solve(hier, image: np.ndarray, spacing, seeds: Seeds, level=None,
          scale=None, outside=None) -> np.ndarray:
    """The object's bool mask on the hierarchy's grid from all of its seeds.

    ``image``: the grid shape plus a channel axis, each channel in [0, 1]; ``scale``
    its :func:`contrast_scale` (computed when not given); ``outside`` (bool, the grid's
    shape): voxels outside the subject, background seeds unless prompted."""
    from scipy import ndimage

    shape = hier.shape
    nd = len(shape)
    if seeds.positive.size == 0:
        return np.zeros(shape, dtype=bool)
    prior = hierarchy_prior(hier, seeds, level)
    if outside is not None:
        prior[outside] = 0.0
    box = _box(prior, np.concatenate([seeds.positive, seeds.negative]), shape)
    box_shape = tuple(s.stop - s.start for s in box)
    st = _stride(box_shape)
    sub = tuple(slice(s.start, s.stop, st) for s in box)
    feats = np.asarray(image[sub], dtype=np.float32)
    sub_shape = feats.shape[:-1]

    def local(flat):
        c = np.unravel_index(flat, shape)
        keep = np.ones(flat.size, dtype=bool)
        loc = []
        for a in range(nd):
            v = c[a] - box[a].start
            keep &= (v >= 0) & (v < box_shape[a])
            loc.append(np.minimum(np.round(v / st).astype(np.int64), sub_shape[a] - 1))
        if not keep.any():
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.ravel_multi_index(tuple(v[keep] for v in loc), sub_shape))

    sp, sn = local(seeds.positive), local(seeds.negative)
    sub_prior = prior[sub]
    faces = np.zeros(sub_shape, dtype=bool)
    for a in range(nd):
        if sub_shape[a] > 2:
            idx = [slice(None)] * nd
            idx[a] = [0, sub_shape[a] - 1]
            faces[tuple(idx)] = True
    background = faces & (sub_prior == 0)
    if outside is not None:
        background |= outside[sub]
    sn = np.setdiff1d(np.union1d(sn, np.flatnonzero(background)), sp)
    if scale is None:
        scale = contrast_scale(image)
    x = random_walk(feats, [float(v) * st for v in spacing], sp, sn, sub_prior, scale)
    if st > 1:
        x = ndimage.zoom(x, [b / s for b, s in zip(box_shape, sub_shape)], order=1,
                         grid_mode=True, mode="nearest")
        pad = [(0, max(0, b - s)) for b, s in zip(box_shape, x.shape)]
        x = np.pad(x, pad, mode="edge")[tuple(slice(0, b) for b in box_shape)]
    mask = np.zeros(shape, dtype=bool)
    mask[box] = x > 0.5
    flat = mask.reshape(-1)
    flat[seeds.forced_in] = True
    flat[seeds.forced_out] = False
    lab, _ = ndimage.label(mask)
    keep = np.unique(lab.reshape(-1)[seeds.forced_in])
    return np.isin(lab, keep[keep > 0])
