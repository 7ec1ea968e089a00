"""Benchmark: how long one re-solve of an object takes after a further prompt.

``run(quick=False) -> dict``::

    {"hippocampus": {"shape", "voxels", "segment_seconds", "resolves",
                     "median_ms", "max_ms", "first_call_ms", "dice_after"},
     "fundus": {...}, "mni": {...}, "targets_ms": {...}}

For a hippocampus crop (``../shared/data/msd_hippocampus``, its first case), the
bundled 512 x 512 fundus and the MNI T1 volume (``../shared/data/mni152``):
``napari-cuts segment`` writes the folder (training 15 s, ``quick``: 3 s; not part of
the measure), then the standard simulated user (:mod:`napari_cuts.evaluation.clicks`)
clicks 10 times against the ground truth (the hippocampus label, the ventricle pseudo
ground truth; for the fundus, with no ground truth here, the tool's one-click
structure eroded by 4 pixels stands in as the target) and every call of
:func:`napari_cuts.segment_from_prompts` after the first is timed (the first loads the
folder). A data set that is absent is reported as skipped.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TARGETS_MS = {"hippocampus": 100, "fundus": 100, "mni": 300}


def _case(name: str):
    """``(image path, ground truth or None, spacing)`` or None when absent."""
    from napari_cuts.io import read_image

    if name == "hippocampus":
        root = SHARED / "msd_hippocampus"
        imgs = sorted((root / "imagesTr").glob("*.nii.gz")) if root.is_dir() else []
        if not imgs:
            return None
        gt = np.asarray(read_image(root / "labelsTr" / imgs[0].name).data) > 0
        return imgs[0], gt
    if name == "mni":
        root = SHARED / "mni152"
        img = root / "mni152_2009a_t1_1mm.nii.gz"
        if not img.is_file():
            return None
        gt = np.asarray(read_image(root / "mni152_2009a_ventricles_pseudo_gt_1mm.nii.gz").data) > 0
        return img, gt
    return REPO / "sample_data" / "fundus.png", None


def _one(name: str, quick: bool) -> dict:
    from scipy import ndimage

    from napari_cuts import segment_from_prompts
    from napari_cuts.hierarchy import Hierarchy
    from napari_cuts.pipeline import segment as run_segment
    from napari_cuts.evaluation.clicks import first_click, next_click

    case = _case(name)
    if case is None:
        return {"skipped": f"{name}: data not found under {SHARED}"}
    path, gt = case
    with tempfile.TemporaryDirectory(prefix=f"bench-prompts-{name}-") as tmp:
        out = Path(tmp) / "seg"
        t0 = time.perf_counter()
        summary = run_segment(path, out, seconds=3 if quick else 15, seed=0, log=lambda *a: None)
        seg_s = time.perf_counter() - t0
        spacing = tuple(summary["geometry"]["spacing"])[-(3 if summary.get("volume") else 2):]
        hier = Hierarchy.load(out / "hierarchy.npz")
        if gt is None:
            centre = tuple(s // 2 for s in hier.shape)
            gt = ndimage.binary_erosion(hier.click_mask(centre), iterations=4)
            if not gt.any():
                gt = hier.click_mask(centre)
        pos, neg = [first_click(gt, spacing)[0]], []
        times, dice = [], []
        mask = None
        for k in range(10):
            t = time.perf_counter()
            mask = segment_from_prompts(out, pos, neg)
            times.append(time.perf_counter() - t)
            dice.append(float(2 * np.sum(mask & gt) / max(1, mask.sum() + gt.sum())))
            nxt = next_click(mask, gt, spacing)
            if nxt is None:
                break
            (pos if nxt[1] else neg).append(tuple(int(v) for v in nxt[0]))
        later = times[1:] or times
        return {"shape": list(hier.shape), "voxels": int(np.prod(hier.shape)),
                "segment_seconds": round(seg_s, 1), "resolves": len(later),
                "median_ms": round(1000 * statistics.median(later), 1),
                "max_ms": round(1000 * max(later), 1),
                "first_call_ms": round(1000 * times[0], 1),
                "dice_after": [round(d, 3) for d in dice]}


def run(quick: bool = False) -> dict:
    names = ["hippocampus", "fundus"] if quick else ["hippocampus", "fundus", "mni"]
    res = {n: _one(n, quick) for n in names}
    res["targets_ms"] = TARGETS_MS
    return res


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
