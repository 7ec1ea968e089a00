"""The prompt solver: an object's mask from all of its prompts at once.

An object is its prompts: positive and negative seed voxels (clicks and scribbles).
One positive click and nothing else is the tool's click (the connected structure of
the hierarchy under it, :func:`napari_cuts.prompts.segment_from_prompts`). Two or more
prompts are solved together by a random walker with a prior (Grady 2005, "Multilabel
random walker image segmentation using prior models"), on the image's voxels:

* **The prior is a marker cut of the hierarchy** (:func:`hierarchy_prior`). The
  *anchor* is the positive click whose own structure is the most persistent
  (:meth:`~napari_cuts.hierarchy.Hierarchy.click_choice`; ties: the larger own
  structure, then the first point in sorted order). It brings its connected structure
  at its scale (the slider's level when one is given, else its own click level), shrunk
  along its lineage to the coarsest structure that holds no negative prompt. Every other positive click brings
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
  gradients (a symmetric M-matrix).
* **Smooth boundaries**: the mask ``x > 1/2`` is smoothed by a Gaussian of one finest
  voxel and taken again above 1/2, keeping the voxels where ``x > SURE_INSIDE``
  (:func:`regularised`), then restricted to the parts
  connected to a positive prompt, every positive prompt in, every negative one out.

A positive seed can only raise the potentials and a negative one only lower them, and
the smoothing keeps that order, so with the anchor unchanged a further positive prompt
never removes voxels and a negative one never adds any. The measurements behind each choice are in
``docs/decisions/0010-prompt-solver.md``.

Large images are solved on a box around the prior and the seeds (``MARGIN``), at a
stride that keeps it under ``MAX_SOLVE_VOXELS`` voxels, and mapped back.

A re-solve reads and writes whole-image arrays only inside that box (the prior's
bounding box comes from bounding boxes of the hierarchy's pieces kept per image,
:class:`SolveContext`). The system is assembled from the grid directly, solved by
conjugate gradients on one BLAS thread, and mapped back by interpolating only the
cells that the level 1/2 crosses. Each of these steps gives the same values as the
plain computation (sparse matrices, SciPy's ``cg``, ``ndimage.zoom`` of the whole box;
``tests/test_prompt_latency.py``).
"""

from __future__ import annotations

import threading
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
#: The mask is smoothed by a Gaussian of this many of the image's finest voxels (per
#: axis in mm, so thick slices are smoothed less in voxels) and taken again above 1/2
#: (:func:`regularised`).
SMOOTH_SIGMA = 1.0
#: Voxels whose potential exceeds this stay in the mask whatever the smoothing says.
SURE_INSIDE = 0.9
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
    inside = _prior_pieces(hier, seeds, level)
    if inside is None:
        return np.zeros(hier.shape, dtype=np.float32)
    return np.take(inside.astype(np.float32), hier._regions()[0])


def _prior_pieces(hier, seeds: Seeds, level=None, border=None):
    """The prior of :func:`hierarchy_prior` on the hierarchy's connected pieces
    (:meth:`~napari_cuts.hierarchy.Hierarchy._regions`): bool per piece, or None
    without a positive prompt. ``border``: :func:`_border_regions` when known."""
    points = list(seeds.positive_points)
    if not points and seeds.forced_in.size:
        points = [tuple(int(c) for c in np.unravel_index(int(seeds.forced_in[0]), hier.shape))]
    if not points:
        return None
    reg, region_base, *_ = hier._regions()
    flat_reg = reg.ravel()
    neg_regions = np.unique(flat_reg[seeds.forced_out]) if seeds.forced_out.size else np.zeros(0, np.intp)
    pos_regions = np.unique(flat_reg[seeds.forced_in]) if seeds.forced_in.size else np.zeros(0, np.intp)
    if border is None:
        border = _border_regions(reg)
    stop = np.union1d(neg_regions, np.setdiff1d(border, pos_regions))
    inside = np.zeros(region_base.shape[0], dtype=bool)
    choice = {}
    for p in points:
        lv, pers = hier.click_choice(p, connected=True)
        if level is not None:
            lv = int(level) % hier.n_levels
        pieces = hier._structure_pieces(p)
        choice[p] = (lv, pers, pieces)
    # ties of persistence are common (it saturates at the coarse levels): the larger
    # own structure wins, then the first point in sorted order
    anchor = min(choice, key=lambda q: (-choice[q][1], -int(choice[q][2][choice[q][0]][2]), q))
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
    return inside


def _box(support, seed_idx: np.ndarray, shape) -> tuple:
    """The solved box: slices around the prior's support and the seeds. ``support``:
    the support's bounding box as ``(nd, 2)`` first and last index per axis, or None
    when the prior is empty."""
    nd = len(shape)
    coords = np.unravel_index(seed_idx, shape)
    box = []
    for a in range(nd):
        vals = [np.asarray(coords[a], dtype=np.int64)]
        if support is not None:
            vals.append(np.asarray(support[a], dtype=np.int64))
        v = np.concatenate(vals)
        lo, hi = int(v.min()), int(v.max()) + 1
        m = max(MARGIN_MIN, int(np.ceil(MARGIN * (hi - lo))))
        box.append(slice(max(0, lo - m), min(int(shape[a]), hi + m)))
    return tuple(box)


class SolveContext:
    """What the solver reuses between the prompts of one image: the bounding box of
    each connected piece of the hierarchy (:meth:`~napari_cuts.hierarchy.Hierarchy._regions`)
    without the ``outside`` voxels, and the pieces on the image's border. Built by
    :func:`solve_context` once per hierarchy and outside mask (one pass over the
    image), so that a re-solve touches whole-image arrays only inside its box."""

    def __init__(self, hier, outside=None):
        from scipy import ndimage

        reg = hier._regions()[0]
        self.hier, self.outside = hier, outside
        lab = reg + 1
        if outside is not None:
            lab[outside] = 0
        objs = ndimage.find_objects(lab, max_label=int(hier._regions()[1].shape[0]))
        del lab
        nd = reg.ndim
        #: (pieces, nd, 2): first and last index along each axis; -1 for a piece that
        #: lies wholly outside
        self.piece_boxes = np.full((len(objs), nd, 2), -1, dtype=np.int64)
        present = [k for k, o in enumerate(objs) if o is not None]
        if present:
            self.piece_boxes[present] = [[(sl.start, sl.stop - 1) for sl in objs[k]] for k in present]
        self.border = _border_regions(reg)

    def support(self, inside: np.ndarray):
        """The bounding box ``(nd, 2)`` of the prior ``inside`` (bool per piece) less the
        outside voxels, or None when that is empty."""
        bx = self.piece_boxes[inside]
        bx = bx[bx[:, 0, 0] >= 0]
        if bx.shape[0] == 0:
            return None
        return np.stack([bx[:, :, 0].min(axis=0), bx[:, :, 1].max(axis=0)], axis=1)


def solve_context(hier, outside=None) -> SolveContext:
    """:class:`SolveContext` of ``hier`` and the ``outside`` mask (grid shape, or None)."""
    return SolveContext(hier, outside)


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


def _axis_weights(features: np.ndarray, spacing, scale: float) -> dict:
    """The edge weights of the voxel grid ``features (..., F)`` along each axis ``a``
    with at least two voxels: ``{a: w}``, ``w`` float32 of the grid's shape less one
    along ``a`` (the edge between a voxel and its successor along ``a``),
    ``exp(-BETA * d^2 / scale) / distance + 1e-6``."""
    shape = features.shape[:-1]
    nd = len(shape)
    fine = float(min(spacing))
    out = {}
    for a in range(nd):
        if shape[a] < 2:
            continue
        lo = [slice(None)] * nd
        hi = [slice(None)] * nd
        lo[a], hi[a] = slice(0, -1), slice(1, None)
        d2 = np.sum((features[tuple(hi)] - features[tuple(lo)]) ** 2, axis=-1, dtype=np.float32)
        dist = np.float32(float(spacing[a]) / fine)
        out[a] = np.exp(-BETA * d2 / scale) / dist + 1e-6
    return out


def _neighbour_slots(weights: dict) -> list:
    """A voxel's neighbours in the order of a sorted sparse row (increasing flat
    index): ``[(axis, sign), ...]``, first the predecessors along the axes with edges
    (``weights``' keys) from the first axis to the last, then the successors from the
    last axis to the first."""
    axes = sorted(weights)
    return [(a, -1) for a in axes] + [(a, 1) for a in reversed(axes)]


def _shifted(arr: np.ndarray, axis: int, sign: int, fill=0) -> np.ndarray:
    """``out[c] = arr[c + sign * e_axis]`` on the grid, ``fill`` where that leaves it."""
    nd = arr.ndim
    src = [slice(None)] * nd
    dst = [slice(None)] * nd
    src[axis], dst[axis] = (slice(0, -1), slice(1, None)) if sign < 0 else (slice(1, None), slice(0, -1))
    out = np.full(arr.shape, fill, dtype=arr.dtype)
    out[tuple(dst)] = arr[tuple(src)]
    return out


def _cg(A, b: np.ndarray, x: np.ndarray, dinv: np.ndarray, rtol: float, maxiter: int) -> np.ndarray:
    """Preconditioned conjugate gradients, step for step SciPy's ``cg`` (``M`` the
    diagonal ``dinv``, ``atol`` 0): the same floating-point operations in the same
    order, so the same iterates, without its per-iteration allocations. ``x`` (the
    start) is overwritten."""
    bnrm2 = np.linalg.norm(b)
    atol = max(0.0, float(rtol) * float(bnrm2))
    if bnrm2 == 0:
        return b
    r = b - A @ x if x.any() else b.copy()
    z = np.empty_like(r)
    tmp = np.empty_like(r)
    p = None
    rho_prev = None
    for iteration in range(maxiter):
        if np.linalg.norm(r) < atol:
            return x
        np.multiply(dinv, r, out=z)
        rho_cur = np.dot(r, z)
        if iteration > 0:
            beta = rho_cur / rho_prev
            p *= beta
            p += z
        else:
            p = z.copy()
        q = A @ p
        alpha = rho_cur / np.dot(p, q)
        np.multiply(alpha, p, out=tmp)
        x += tmp
        np.multiply(alpha, q, out=tmp)
        r -= tmp
        rho_prev = rho_cur
    return x


_BLAS = {"lock": threading.Lock(), "users": 0, "limiter": None, "controller": None}


class _one_blas_thread:
    """Run the conjugate gradients' dot products on one BLAS thread: vectors of a few
    hundred thousand entries gain nothing from more, and where the cores are busy the
    waiting BLAS threads made a brain's re-solve several times slower (2.2 s against
    0.49 s on 2 shared cores). One thread also makes the dot products, and so the
    potentials, the same whatever the machine's BLAS threads (two threads moved them
    by up to 2e-13, no mask voxel). Nested and concurrent solves share one limit,
    lifted by the last to finish. Without threadpoolctl (a scikit-learn dependency)
    nothing changes."""

    def __enter__(self):
        with _BLAS["lock"]:
            if _BLAS["users"] == 0:
                try:
                    if _BLAS["controller"] is None:
                        from threadpoolctl import ThreadpoolController

                        _BLAS["controller"] = ThreadpoolController()
                    _BLAS["limiter"] = _BLAS["controller"].limit(limits=1, user_api="blas")
                except Exception:  # noqa: BLE001 - no threadpoolctl: leave the threads alone
                    _BLAS["limiter"] = None
            _BLAS["users"] += 1
        return self

    def __exit__(self, *exc):
        with _BLAS["lock"]:
            _BLAS["users"] -= 1
            if _BLAS["users"] == 0 and _BLAS["limiter"] is not None:
                _BLAS["limiter"].restore_original_limits()
                _BLAS["limiter"] = None
        return False


def random_walk(features: np.ndarray, spacing, seed_pos: np.ndarray, seed_neg: np.ndarray,
                prior: np.ndarray, scale: float) -> np.ndarray:
    """Potentials ``(grid shape)`` in [0, 1] of the random walker with a prior:
    ``features`` (..., F), seeds as flat indices into the grid, ``prior`` the grid's
    prior of the object, ``scale`` the unit of squared differences
    (:func:`contrast_scale`).

    The Laplacian is assembled from the grid's neighbour slots directly (the rows of
    the sparse weight matrix ``W`` in the order SciPy sorts them, float32 as the
    weights): the degrees, the system over the free voxels and its right-hand side are
    those of ``W`` built as a sparse matrix, value for value."""
    from scipy.sparse import csr_matrix

    shape = features.shape[:-1]
    n = int(np.prod(shape))
    x = prior.ravel().astype(np.float64)
    fixed = np.zeros(n, dtype=bool)
    fixed[seed_neg] = True
    fixed[seed_pos] = True
    x[seed_neg] = 0.0
    x[seed_pos] = 1.0
    free = np.flatnonzero(~fixed)
    if free.size == 0:
        return x.reshape(shape)
    weights = _axis_weights(features, spacing, scale)
    slots = _neighbour_slots(weights)
    K = len(slots)
    half = K // 2
    isfree = ~fixed.reshape(shape)
    isone = (fixed & (x == 1.0)).reshape(shape)              # positive seeds
    idx_dtype = np.int32 if n * (K + 1) < np.iinfo(np.int32).max else np.int64
    pos = (np.cumsum(isfree.ravel(), dtype=idx_dtype) - 1).reshape(shape)
    # the rows of W and of A side by side, slot c of a node its c-th entry in
    # increasing column order; A's diagonal (column ``half``) sits between the
    # neighbours before and after it
    vals = np.zeros((n, K + 1), dtype=np.float32)             # W's weights
    keep = np.zeros((n, K + 1), dtype=bool)                   # A's entries
    cols = np.empty((n, K + 1), dtype=idx_dtype)
    n_keep = np.ones(shape, dtype=np.int8)                    # A's entries per row
    acc = np.zeros(n, dtype=np.float64)
    # degrees: the row sums of W as ``W.sum(axis=1)`` makes them (NumPy's reduceat of
    # each CSR row: its first weight plus the sum of the others in order)
    first = np.zeros(shape, dtype=np.float32)
    rest = np.zeros(shape, dtype=np.float32)
    seen = np.zeros(shape, dtype=bool)
    for k, (a, sgn) in enumerate(slots):
        c = k if k < half else k + 1
        part = [slice(None)] * len(shape)
        part[a] = slice(1, None) if sgn < 0 else slice(0, -1)
        wk = np.zeros(shape, dtype=np.float32)
        wk[tuple(part)] = weights[a]
        vk = np.zeros(shape, dtype=bool)
        vk[tuple(part)] = True
        vals[:, c] = wk.ravel()
        kk = vk & _shifted(isfree, a, sgn, False)
        keep[:, c] = kk.ravel()
        n_keep += kk
        cols[:, c] = _shifted(pos, a, sgn, 0).ravel()
        # right-hand side W_free,fixed @ x_fixed, the neighbours in order, in float64:
        # a negative seed adds w * 0 = +0.0, which changes no such sum, a positive one w
        acc += np.where(vk & _shifted(isone, a, sgn, False), wk, np.float32(0)).ravel()
        np.copyto(first, wk, where=vk & ~seen)
        rest += np.where(vk & seen, wk, np.float32(0))
        seen |= vk
    deg = (first + rest).ravel()
    diag = deg[free] + GAMMA                                  # float32, as before
    b = acc[free] + GAMMA * x[free]
    # A = diag(deg + GAMMA) - W_free,free
    np.negative(vals, out=vals)
    vals[free, half] = diag
    keep[:, half] = True
    cols[:, half] = pos.ravel()
    keep &= isfree.reshape(n, 1)
    indptr = np.zeros(free.size + 1, dtype=idx_dtype)
    np.cumsum(n_keep.ravel()[free], out=indptr[1:])
    A = csr_matrix((vals[keep].astype(np.float64), cols[keep], indptr),
                   shape=(free.size, free.size))
    dinv = (1.0 / diag).astype(np.float64)                    # float32, as before
    with _one_blas_thread():
        sol = _cg(A, b, x[free].copy(), dinv, CG_TOL, CG_MAXITER)
    x[free] = np.clip(sol, 0.0, 1.0)
    return x.reshape(shape)


def regularised(x: np.ndarray, spacing, fine: float, sigma: float = None) -> np.ndarray:
    """The mask ``x > 1/2`` of the potentials ``x`` (the solved grid, spacing
    ``spacing`` mm per axis) smoothed by a Gaussian of ``sigma`` (default
    :data:`SMOOTH_SIGMA`) times ``fine`` mm, with every voxel whose potential exceeds
    :data:`SURE_INSIDE` kept: float64 in [0, 1], read as a mask above 1/2 like the
    potentials.

    The random walker's level 1/2 follows every step of the image's noise where the
    contrast is weak (most of the hippocampus's errors after 10 clicks lie in a one-voxel
    shell around the expert's boundary); the smoothing is a prior of smooth boundaries.
    Smoothing the mask rather than the potentials keeps its size (a disc of radius r
    shrinks by about sigma^2 / 2r). A structure thinner than two voxels would vanish
    under the smoothing; where the walker is sure of it (a vessel between its seeds) it
    stays. Each step keeps the order of the seeds: a mask that holds another one still
    does after it (decision 0014)."""
    from scipy import ndimage

    sigma = SMOOTH_SIGMA if sigma is None else float(sigma)
    if sigma <= 0:
        return x
    sig = [sigma * float(fine) / float(s) for s in spacing]
    out = ndimage.gaussian_filter((x > 0.5).astype(np.float64), sig, mode="nearest")
    sure = x > SURE_INSIDE
    out[sure] = np.maximum(out[sure], 0.5 + 1e-6)
    return out


def _zoom_axis(n_in: int, n_box: int):
    """One axis of ``ndimage.zoom(x, n_box / n_in, order=1, grid_mode=True,
    mode="nearest")`` padded at its end to ``n_box`` (as :func:`solve` maps a strided
    solution back): for each box index the two input indices and their weights, as
    SciPy's ``zoom_shift`` computes them, and the input index starting the pair of
    voxels that bounds them."""
    n_out = int(round(n_in * (n_box / n_in)))
    zoom = float(np.divide(np.array([n_in]), np.array([n_out]))[0]) if n_out else 1.0
    k = np.minimum(np.arange(n_box), max(n_out - 1, 0)).astype(np.float64)
    cc = k + 0.5
    cc *= zoom
    cc -= 0.5
    fl = np.floor(cc)
    start = fl.astype(np.int64)
    w0 = 1.0 - (cc - fl)
    w1 = 1.0 - w0
    i0 = np.clip(start, 0, n_in - 1)
    i1 = np.clip(start + 1, 0, n_in - 1)
    return i0, i1, w0, w1, np.clip(start, 0, n_in - 1)


#: Potentials this close to 1/2 at every voxel of an interpolation cell are
#: interpolated exactly (:func:`_upsampled_above_half`); the rounding of the
#: interpolation itself is below 1e-15.
_SURE = 1e-9


def _upsampled_above_half(x: np.ndarray, box_shape) -> np.ndarray:
    """``ndimage.zoom(x, box / x.shape, order=1, grid_mode=True, mode="nearest")``,
    padded with its edge (cropped) to ``box_shape``, ``> 0.5``: bool of ``box_shape``.

    A linear interpolation lies between the smallest and the largest of the voxels it
    weighs, so a box voxel whose cell of the strided grid is wholly above (below) 1/2
    by more than ``_SURE`` is decided without interpolating; the others (the cells the
    level 1/2 crosses) are interpolated as SciPy's ``zoom_shift`` does, term for term
    (same weights, same order of the products and of the sum): the answer is that of
    zooming the whole box, for a fraction of the work."""
    nd = x.ndim
    axes = [_zoom_axis(int(n), int(b)) for n, b in zip(x.shape, box_shape)]
    lo = x
    hi = x
    for a in range(nd):
        if x.shape[a] < 2:
            continue
        nxt = [slice(None)] * nd
        nxt[a] = np.minimum(np.arange(1, x.shape[a] + 1), x.shape[a] - 1)
        lo = np.minimum(lo, lo[tuple(nxt)])
        hi = np.maximum(hi, hi[tuple(nxt)])
    cls = np.full(x.shape, 2, dtype=np.uint8)              # 2: interpolate
    cls[lo > 0.5 + _SURE] = 1
    cls[hi < 0.5 - _SURE] = 0
    cls_box = cls
    for a, ax in enumerate(axes):
        cls_box = np.take(cls_box, ax[4], axis=a)
    out = cls_box == 1
    unsure = np.nonzero(cls_box == 2)
    if unsure[0].size:
        idx = [(ax[0][u], ax[1][u]) for ax, u in zip(axes, unsure)]
        wts = [(ax[2][u], ax[3][u]) for ax, u in zip(axes, unsure)]
        t = np.zeros(unsure[0].size, dtype=np.float64)
        for corner in np.ndindex(*([2] * nd)):              # the last axis fastest
            coeff = x[tuple(idx[a][h] for a, h in enumerate(corner))].astype(np.float64)
            for a, h in enumerate(corner):
                coeff *= wts[a][h]
            t += coeff
        out[unsure] = t > 0.5
    return out


def solve(hier, image: np.ndarray, spacing, seeds: Seeds, level=None,
          scale=None, outside=None, context: SolveContext = None) -> np.ndarray:
    """The object's bool mask on the hierarchy's grid from all of its seeds.

    ``image``: the grid shape plus a channel axis, each channel in [0, 1]; ``scale``
    its :func:`contrast_scale` (computed when not given); ``outside`` (bool, the grid's
    shape): voxels outside the subject, background seeds unless prompted;
    ``context``: the :func:`solve_context` of ``hier`` and ``outside`` when the caller
    keeps one (made here otherwise). Only the solved box is read or written at the
    grid's size, besides the answer itself."""
    from scipy import ndimage

    shape = hier.shape
    nd = len(shape)
    if seeds.positive.size == 0:
        return np.zeros(shape, dtype=bool)
    if context is None or context.hier is not hier or context.outside is not outside:
        context = solve_context(hier, outside)
    reg = hier._regions()[0]
    inside = _prior_pieces(hier, seeds, level, border=context.border)
    if inside is None:
        inside = np.zeros(hier._regions()[1].shape[0], dtype=bool)
    box = _box(context.support(inside), np.concatenate([seeds.positive, seeds.negative]), shape)
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
    sub_prior = np.take(inside.astype(np.float32), reg[sub])
    if outside is not None:
        sub_out = outside[sub]
        sub_prior[sub_out] = 0.0
    faces = np.zeros(sub_shape, dtype=bool)
    for a in range(nd):
        if sub_shape[a] > 2:
            idx = [slice(None)] * nd
            idx[a] = [0, sub_shape[a] - 1]
            faces[tuple(idx)] = True
    background = faces & (sub_prior == 0)
    if outside is not None:
        background |= sub_out
    neg = background.ravel().copy()
    neg[sn] = True
    neg[sp] = False
    sn = np.flatnonzero(neg)                 # sorted, unique, without the positive seeds
    if scale is None:
        scale = contrast_scale(image)
    sub_spacing = [float(v) * st for v in spacing]
    x = random_walk(feats, sub_spacing, sp, sn, sub_prior, scale)
    if st == 1:
        # a strided grid is already coarser than the smoothing's scale, and the linear
        # upsampling below smooths its boundary
        x = regularised(x, sub_spacing, float(min(spacing)))
    # the potentials zoomed back to the box (linear), above 1/2
    m = _upsampled_above_half(x, box_shape) if st > 1 else x > 0.5
    # the mask is empty outside the box, which holds every seed (so every forced voxel):
    # its connected parts are those of the box
    forced = [np.unravel_index(f, shape) for f in (seeds.forced_in, seeds.forced_out)]
    lo = np.array([s.start for s in box])[:, None]
    hi = np.array([s.stop for s in box])[:, None]
    if all(np.all((np.asarray(c) >= lo) & (np.asarray(c) < hi)) for c in forced if len(c[0])):
        f_in, f_out = (tuple(c[a] - box[a].start for a in range(nd)) for c in forced)
        m[f_in] = True
        m[f_out] = False
        lab, _ = ndimage.label(m)
        keep = np.unique(lab[f_in])
        mask = np.zeros(shape, dtype=bool)
        mask[box] = np.isin(lab, keep[keep > 0])
        return mask
    mask = np.zeros(shape, dtype=bool)
    mask[box] = m
    flat = mask.reshape(-1)
    flat[seeds.forced_in] = True
    flat[seeds.forced_out] = False
    lab, _ = ndimage.label(mask)
    keep = np.unique(lab.reshape(-1)[seeds.forced_in])
    return np.isin(lab, keep[keep > 0])
