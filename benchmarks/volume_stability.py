"""How steady the volume answers are on the bundled MNI volume: the spread over encoders,
condensation seeds and a rounding-level change of the input (issue 11's "in every run").

    .venv/bin/python benchmarks/volume_stability.py [--weights A.pt B.pt ...]
        [--train 3 --seconds 60] [--seeds 0 1 2] [--perturb 1e-6] [--out FILE.json]

For each encoder (the given weights, or ``--train`` encoders trained here with training
seeds 0, 1, ..., ``--seconds`` each) and each condensation seed, the default
``segment_volume`` run is scored against the ventricle pseudo ground truth (a
thresholded template, not an expert tracing), 3D Dice:

- ``best``: the label-hint cluster at the best level (an oracle level);
- ``persistent``: the persistent map's structure under the innermost ventricle voxel,
  whole (every piece of it) and connected (the default map's piece);
- ``lateral_click``: the tool's own click (``Hierarchy.click_mask``) at the innermost
  voxel of the lateral ventricles, against them.

With ``--perturb EPS`` each run is repeated on the same joined features times
``1 + EPS * N(0, 1)`` (a change of the size of float32 rounding in a different order of
operations): the answers should not depend on it, and the table shows how much they do.
Prints a table per run and a summary (mean, lowest, how many runs reach the targets).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "src" / "napari_cuts" / "sample_data"


def _scores(h, gt, gl) -> dict:
    from napari_cuts.evaluation import best_level
    from napari_cuts.metrics import dice
    from napari_cuts.selection import innermost_point

    pt, pl = innermost_point(gt), innermost_point(gl)
    whole = np.asarray(h.persistent(connected=False))
    piece = np.asarray(h.persistent())
    return {"best": float(best_level(h, gt)[2]),
            "persistent_whole": float(dice(whole == whole[pt], gt)),
            "persistent_connected": float(dice(piece == piece[pt], gt)),
            "lateral_click": float(dice(h.click_mask(pl), gl)),
            "levels": int(h.n_levels)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="*", default=[])
    ap.add_argument("--train", type=int, default=3, help="encoders to train when no --weights")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--perturb", type=float, default=1e-6)
    ap.add_argument("--out", default="out/volume_stability.json")
    args = ap.parse_args(argv)

    from napari_cuts.condensation import condense
    from napari_cuts.encoder import load_encoder
    from napari_cuts.io import read_image
    from napari_cuts.pipeline import refined_hierarchy, segment_volume, train_volume_encoder

    src = read_image(SAMPLE / "mri_volume.nii.gz")
    lab = np.rint(np.asarray(read_image(SAMPLE / "mri_volume_seg.nii.gz").data)).astype(int)
    vol, spacing = np.asarray(src.data, dtype=np.float32), src.spacing
    gt, gl = lab > 0, lab == 1
    encoders = [(Path(w).stem, load_encoder(w)) for w in args.weights] or [
        (f"trained_{args.seconds:g}s_seed{i}",
         train_volume_encoder(vol, spacing=spacing, seconds=args.seconds, seed=i))
        for i in range(args.train)]
    rows = []
    for name, enc in encoders:
        for seed in args.seeds:
            t0 = time.perf_counter()
            res = segment_volume(enc, vol, spacing=spacing, seed=seed)
            row = {"encoder": name, "seed": seed, **_scores(res.hierarchy, gt, gl),
                   "seconds": round(time.perf_counter() - t0, 1)}
            if args.perturb > 0:
                rng = np.random.default_rng(seed)
                f = res.features * (1 + args.perturb * rng.standard_normal(res.features.shape,
                                                                            dtype=np.float32))
                meta = res.hierarchy.metadata
                h = condense(f, seed=seed, spacing=tuple(meta["grid_spacing"]), normalize=False)
                if tuple(res.pool) != (1, 1, 1):
                    h = refined_hierarchy(h, vol, res.pool)
                row["perturbed"] = _scores(h, gt, gl)
            rows.append(row)
            p = row.get("perturbed", {})
            print(f"{name} seed {seed}: best {row['best']:.3f} persistent {row['persistent_whole']:.3f}"
                  f" (piece {row['persistent_connected']:.3f}) lateral click {row['lateral_click']:.3f}"
                  + (f" | perturbed: {p['best']:.3f} / {p['persistent_whole']:.3f} / "
                     f"{p['lateral_click']:.3f}" if p else "") + f" ({row['seconds']} s)", flush=True)
    summary = {}
    for key, target in (("best", 0.80), ("persistent_whole", 0.70),
                        ("persistent_connected", 0.70), ("lateral_click", None)):
        vals = [r[key] for r in rows] + [r["perturbed"][key] for r in rows if "perturbed" in r]
        summary[key] = {"mean": float(np.mean(vals)), "min": float(np.min(vals)),
                        "max": float(np.max(vals)), "n": len(vals)}
        if target is not None:
            summary[key]["reaching_target"] = int(sum(v >= target for v in vals))
    if args.perturb > 0:
        summary["perturbation_change"] = {
            key: float(np.mean([abs(r[key] - r["perturbed"][key]) for r in rows]))
            for key in ("best", "persistent_whole", "lateral_click")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "summary": summary, "perturb": args.perturb}, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
