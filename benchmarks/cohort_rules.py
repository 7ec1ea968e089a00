"""How the cohort match's parts each earn their place, on the 40 development retina images.

``python benchmarks/cohort_rules.py CACHE [--seconds 60] [--seed 0] [--refs 8]``

1. Unless ``CACHE`` holds them already: ONE cohort encoder (``get_encoder`` on 16 evenly
   spaced images, ``--seconds`` of training, ``--seed``), then every image segmented once
   (``segment_image``, seed 0): ``CACHE/<image>_h.npz`` (hierarchy) and ``_f.npz`` (the
   features condensation saw).
2. ``--refs`` references spread over the 40 images (every 40 / refs-th), each clicked at
   the innermost point of its expert mask; in the other 39 the matched mask
   (``matching.prototype_at`` + ``matching.matched_mask``) is scored against theirs. Rows: the
   shipped rule; without the image balance (``MATCH_BALANCE_IMAGE``); without the place
   (``MATCH_POSITION`` 0); with the plain cosine instead of the length-aware
   ``appearance_similarity``; and, as a floor with no matching at all, the click at the
   reference's relative position in every image (``Hierarchy.click_mask``).

Prints one line per row (mean Dice over references, then per reference). The expert
masks are under a non-commercial licence: nothing of them is written to ``CACHE``
beyond the scores printed. The numbers of ``napari_cuts.cohort``'s constants come from
this script (two encoders, seeds 0 and 1).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _data() -> Path:
    return Path(os.environ.get("NAPARI_CUTS_DATA", REPO.parent / "shared" / "data")) / "retina"


def build_cache(cache: Path, seconds: float, seed: int) -> None:
    from napari_cuts.cohort import MAX_TRAIN_IMAGES
    from napari_cuts.io import read_image
    from napari_cuts.pipeline import get_encoder, segment_image

    imgs = sorted((_data() / "image_with_GA").glob("image*.png"), key=lambda p: int(p.stem[5:]))
    if all((cache / f"{p.stem}_h.npz").exists() for p in imgs):
        return
    cache.mkdir(parents=True, exist_ok=True)
    data = [np.asarray(read_image(p).data) for p in imgs]
    idx = np.linspace(0, len(imgs) - 1, MAX_TRAIN_IMAGES).round().astype(int)
    t0 = time.perf_counter()
    enc, _ = get_encoder([data[i] for i in idx], seconds=seconds, seed=seed)
    print(f"encoder: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    for p, d in zip(imgs, data):
        r = segment_image(enc, d, seed=0)
        r.hierarchy.save(cache / f"{p.stem}_h.npz")
        np.savez(cache / f"{p.stem}_f.npz", f=r.features, pool=np.array(r.pool),
                 n_image=np.array(r.features.shape[-1] - r.embeddings.shape[-1]))


def evaluate(cache: Path, refs: int) -> dict:
    from napari_cuts import matching as C
    from napari_cuts.hierarchy import Hierarchy
    from napari_cuts.metrics import dice
    from napari_cuts.selection import innermost_point

    root = _data()
    stems = sorted((p.name[:-6] for p in cache.glob("*_h.npz")), key=lambda s: int(s[5:]))
    H = {s: Hierarchy.load(cache / f"{s}_h.npz") for s in stems}
    F = {s: np.load(cache / f"{s}_f.npz") for s in stems}
    G = {s: np.load(root / "label_with_GA" / f"label{s[5:]}.npy") > 0 for s in stems}
    chosen = stems[:: max(1, len(stems) // max(1, refs))]

    def cosine(means, prototype):
        p = np.asarray(prototype, dtype=np.float64)
        return (means @ p) / (np.maximum(np.linalg.norm(means, axis=1), 1e-12)
                              * max(float(np.linalg.norm(p)), 1e-12))

    variants = {"shipped": {}, "no image balance": {"MATCH_BALANCE_IMAGE": False},
                "no place": {"MATCH_POSITION": 0.0}, "plain cosine": {"appearance_similarity": cosine}}
    out = {}
    for name, patch in variants.items():
        old = {k: getattr(C, k) for k in patch}
        try:
            for k, v in patch.items():
                setattr(C, k, v)
            per = []
            for r in chosen:
                f = F[r]
                ref = C.prototype_at(H[r], f["f"], int(f["pool"]), innermost_point(G[r]),
                                     n_image=int(f["n_image"]))
                per.append(float(np.mean([dice(C.matched_mask(H[s], F[s]["f"], int(F[s]["pool"]), ref,
                                                               n_image=int(F[s]["n_image"]))[2], G[s])
                                          for s in stems if s != r])))
        finally:
            for k, v in old.items():
                setattr(C, k, v)
        out[name] = per
    per = []
    for r in chosen:
        rel = np.array(innermost_point(G[r]), float) / np.array(G[r].shape)
        ds = []
        for s in stems:
            if s != r:
                q = tuple(int(v) for v in np.minimum(rel * np.array(G[s].shape), np.array(G[s].shape) - 1))
                ds.append(float(dice(H[s].click_mask(q), G[s])))
        per.append(float(np.mean(ds)))
    out["no matching: click the reference's relative position"] = per
    return out


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    opts = {"--seconds": 60.0, "--seed": 0, "--refs": 8}
    for flag in list(opts):
        if flag in args:
            i = args.index(flag)
            opts[flag] = type(opts[flag])(args[i + 1])
            del args[i:i + 2]
    if len(args) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    if not (_data() / "image_with_GA").is_dir():
        print(f"skipped: no retina images under {_data()} (non-commercial data, not bundled)")
        return 0
    cache = Path(args[0])
    build_cache(cache, float(opts["--seconds"]), int(opts["--seed"]))
    for name, per in evaluate(cache, int(opts["--refs"])).items():
        print(f"{name}: mean {np.mean(per):.3f} | " + " ".join(f"{x:.2f}" for x in per))
    return 0


if __name__ == "__main__":
    sys.exit(main())
