"""The prompt solver's shortcuts give the answers of the plain computation.

``random_walk`` assembles its system from the grid and runs its own conjugate
gradients, ``_upsampled_above_half`` interpolates only where the level 1/2 passes and
``solve`` touches whole-image arrays only inside its box: each is compared here with the
straightforward computation it replaces (sparse matrices and SciPy's ``cg``,
``ndimage.zoom`` of the whole box), value for value. Nothing here is timed.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_cuts import prompt_solver as ps


def _plain_random_walk(features, spacing, seed_pos, seed_neg, prior, scale):
    """The random walker as a sparse weight matrix, its Laplacian sliced to the free
    voxels and SciPy's ``cg`` with a diagonal preconditioner."""
    from scipy.sparse import coo_matrix, diags
    from scipy.sparse.linalg import LinearOperator, cg

    shape = features.shape[:-1]
    n = int(np.prod(shape))
    weights = ps._axis_weights(features, spacing, scale)
    idx = np.arange(n).reshape(shape)
    ii, jj, ww = [], [], []
    for a, w in weights.items():
        lo = [slice(None)] * len(shape)
        hi = [slice(None)] * len(shape)
        lo[a], hi[a] = slice(0, -1), slice(1, None)
        ii.append(idx[tuple(lo)].ravel())
        jj.append(idx[tuple(hi)].ravel())
        ww.append(w.ravel())
    i, j, w = (np.concatenate(v) for v in (ii, jj, ww))
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
    Wf = W[free]
    A = (diags(deg[free] + ps.GAMMA) - Wf[:, free]).tocsr()
    b = Wf[:, np.flatnonzero(fixed)] @ x[fixed] + ps.GAMMA * x[free]
    dinv = 1.0 / (deg[free] + ps.GAMMA)
    M = LinearOperator(A.shape, matvec=lambda v: dinv * v, dtype=np.float64)
    with ps._one_blas_thread():
        sol, _ = cg(A, b, x0=x[free].copy(), rtol=ps.CG_TOL, maxiter=ps.CG_MAXITER, M=M)
    x[free] = np.clip(sol, 0.0, 1.0)
    return x.reshape(shape)


@pytest.mark.parametrize("shape,channels,spacing", [
    ((23, 31), 3, (1.0, 1.0)),
    ((9, 14, 12), 1, (1.0, 1.0, 1.0)),
    ((7, 13, 11), 1, (3.0, 1.0, 1.0)),      # a thick axis
    ((1, 12, 10), 1, (1.0, 1.0, 1.0)),      # an axis of one voxel
])
def test_random_walk_is_the_sparse_matrix_solution_value_for_value(shape, channels, spacing):
    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    n = int(np.prod(shape))
    # smooth features with an edge, so that the potentials are not all near 0 or 1
    grid = np.indices(shape).sum(axis=0).astype(np.float32)
    feats = np.stack([(grid > grid.mean()).astype(np.float32) * 0.6
                      + 0.2 * rng.random(shape, dtype=np.float32) for _ in range(channels)], -1)
    prior = (rng.random(shape) > 0.5).astype(np.float32)
    seeds = rng.permutation(n)[: max(4, n // 10)]
    sp, sn = np.sort(seeds[: len(seeds) // 2]), np.sort(seeds[len(seeds) // 2:])
    scale = ps.contrast_scale(feats)
    got = ps.random_walk(feats, spacing, sp, sn, prior, scale)
    want = _plain_random_walk(feats, spacing, sp, sn, prior, scale)
    assert got.dtype == want.dtype and np.array_equal(got, want)


def _zoomed(x, box_shape):
    from scipy import ndimage

    z = ndimage.zoom(x, [b / s for b, s in zip(box_shape, x.shape)], order=1, grid_mode=True,
                     mode="nearest")
    pad = [(0, max(0, b - s)) for b, s in zip(box_shape, z.shape)]
    return np.pad(z, pad, mode="edge")[tuple(slice(0, b) for b in box_shape)]


def test_upsampled_mask_is_the_zoomed_box_above_one_half():
    rng = np.random.default_rng(3)
    for trial in range(60):
        nd = 2 + trial % 2
        stride = 2 + trial % 3
        sub = tuple(int(v) for v in rng.integers(2, 14 if nd == 3 else 40, size=nd))
        box = tuple(s * stride - int(rng.integers(0, stride)) for s in sub)
        x = rng.random(sub)
        if trial % 3 == 0:
            x = np.round(x * 4) / 4            # values at exactly 1/2, cells on the level
        if trial % 5 == 0:
            x = 0.5 + (x - 0.5) * 1e-12        # every cell within reach of the level
        np.testing.assert_array_equal(ps._upsampled_above_half(x, box), _zoomed(x, box) > 0.5)


def test_solve_with_and_without_a_kept_context_and_the_full_size_mask(tmp_path):
    from napari_cuts.hierarchy import Hierarchy

    rng = np.random.default_rng(0)
    shape = (12, 40, 36)
    zz, yy, xx = np.indices(shape)
    ball = (zz - 6) ** 2 + (yy - 20) ** 2 / 4 + (xx - 18) ** 2 / 4 < 30
    image = (0.2 + 0.6 * ball + 0.05 * rng.random(shape)).astype(np.float32)[..., None]
    fine = (zz // 3) * 100 + (yy // 5) * 10 + (xx // 5)
    _, fine = np.unique(fine, return_inverse=True)
    fine = fine.reshape(shape)
    coarse = fine.copy()
    coarse[ball] = fine.max() + 1
    _, coarse = np.unique(coarse, return_inverse=True)
    hier = Hierarchy.from_labels([fine, coarse.reshape(shape), np.zeros(shape, np.int64)])
    outside = np.zeros(shape, dtype=bool)
    outside[:, :, :2] = True
    seeds = ps.make_seeds(shape, (2.0, 1.0, 1.0), [(6, 20, 18), (6, 24, 22)], [(6, 5, 5)])
    context = ps.solve_context(hier, outside)
    a = ps.solve(hier, image, (2.0, 1.0, 1.0), seeds, None, None, outside, context=context)
    b = ps.solve(hier, image, (2.0, 1.0, 1.0), seeds, None, None, outside)
    assert a.shape == shape and a.dtype == bool
    np.testing.assert_array_equal(a, b)
    assert a[6, 20, 18] and a[6, 24, 22] and not a[6, 5, 5] and not a[outside].any()
    # the prior on the pieces is the full-size prior
    inside = ps._prior_pieces(hier, seeds)
    np.testing.assert_array_equal(np.take(inside.astype(np.float32), hier._regions()[0]),
                                  ps.hierarchy_prior(hier, seeds))


def test_the_blas_thread_limit_is_lifted_after_a_solve():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas():
        return {d["filepath"]: d["num_threads"] for d in threadpoolctl.threadpool_info()
                if d["user_api"] == "blas"}

    before = blas()
    with ps._one_blas_thread():
        with ps._one_blas_thread():             # nested (a second solve in another thread)
            inner = blas()
    after = blas()
    # the BLAS libraries loaded when the solver first limited them (NumPy's among them)
    known = [c.filepath for c in ps._BLAS["controller"].lib_controllers if c.user_api == "blas"]
    assert known and all(inner[f] == 1 for f in known)
    assert after == before
