"""Benchmark of a volume as one object: the bundled MNI T1 volume, default settings.

``run(quick=False) -> dict``::

    {"shape", "spacing", "grid_shape", "pools", "train_budget_seconds", "train_steps",
     "seconds": {"read", "train", "grid", "embed", "condense", "segment",
                 "write_hierarchy", "persistent", "write_persistent", "total"},
     "peak_mb", "peak_mb_after": {stage: MB}, "baseline_mb",
     "n_levels", "n_clusters": [finest, coarsest],
     "slider_ms": {"median", "max", "n"},
     "click_ms": {"replace_median", "add_median", "max", "n"},
     "tool_click_ms": {"first", "median"}, "prepare_connected_ms",
     "connected_click_ms": {"median", "max", "n"},
     "dice": {"ventricles": {...}, "lateral_ventricles": {...}},
     "targets": {...}}

What it does, in a fresh subprocess (so that ``peak_mb`` is the peak RSS of this work
alone, ``ru_maxrss``; ``peak_mb_after`` is the high-water mark after each stage): read
``src/napari_cuts/sample_data/mri_volume.nii.gz`` (197 x 233 x 189, 1 mm) and its
ventricle pseudo ground truth, train the volume encoder as ``napari-cuts segment`` does
(default budget: the step rule, from the packaged volume weights; ``quick=True``: 10 s), segment the volume with the default working
grid (:func:`napari_cuts.pipeline.segment_volume`: grid, embed, condense), write
``hierarchy.npz`` and ``persistent.nii.gz`` to a temporary folder.

Latencies on the full-resolution volume: ``slider_ms`` is ``labels(level)`` (every
level, 3 rounds); ``click_ms`` is :func:`napari_cuts.selection.update_mask` on one
level's labels (replace, and add to an existing mask); ``tool_click_ms`` the tool's own
click answer without labels (:func:`napari_cuts.evaluation.click_mask`: the click level
when the hierarchy has one, else the persistent map), first call and repeated, after
``prepare_connected_ms`` (:meth:`~napari_cuts.hierarchy.Hierarchy.prepare_connected`, which
the widget runs in its worker thread); ``connected_click_ms`` the widget's default click
(the connected part of the cluster under the pointer at the slider's level) at five new
points.

Quality (the ground truth is a thresholded template, not an expert tracing): one click
at the innermost voxel of the pseudo ground truth (``ventricles`` = every label,
``lateral_ventricles`` = label 1); per structure: ``label_hint_best`` (best level's
label-hint 3D Dice, an oracle) and its level, ``click_at_best_level`` (the click on that
level), ``click_best`` (the best click over all levels, an oracle), ``tool_click`` (the
tool's answer, no labels), ``persistent_click`` and ``persistent_label_hint``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "src" / "napari_cuts" / "sample_data"
QUICK_SECONDS = 10.0

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np

def hwm_mb():
    with open('/proc/self/status') as fh:
        for line in fh:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def rss_mb():
    with open('/proc/self/status') as fh:
        for line in fh:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    return float('nan')

vol_path, seg_path, out_dir, budget = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
budget = None if budget == 'default' else float(budget)
import napari_cuts.pipeline as P
from napari_cuts.io import read_image, write_labels
from napari_cuts.metrics import dice
from napari_cuts.selection import innermost_point, label_hint, select_cluster, update_mask
from napari_cuts.evaluation import click_mask
from napari_cuts.volume import MAX_VOLUME_POINTS, volume_plan

R = {'baseline_mb': rss_mb()}
sec, peak = {}, {}
t_all = time.perf_counter()
t = time.perf_counter()
src = read_image(vol_path)
seg = read_image(seg_path)
vol = np.asarray(src.data)
spacing = tuple(float(v) for v in src.spacing[:3])
lab = np.rint(np.asarray(seg.data, dtype=np.float64))
sec['read'] = time.perf_counter() - t; peak['read'] = hwm_mb()
p = volume_plan(vol.shape, spacing, MAX_VOLUME_POINTS)
R.update({'shape': list(vol.shape), 'spacing': list(spacing), 'grid_shape': list(p.grid_shape),
          'pools': list(p.pools), 'train_budget_seconds': budget})
t = time.perf_counter()
enc = P.train_volume_encoder(vol, spacing=spacing, max_points=p.points, seconds=budget, seed=0)
R['train_steps'] = int(enc.metadata['steps'])
sec['train'] = time.perf_counter() - t; peak['train'] = hwm_mb()
t = time.perf_counter()
res = P.segment_volume(enc, vol, spacing=spacing, seed=0, max_points=p.points)
sec['segment'] = time.perf_counter() - t; peak['segment'] = hwm_mb()
for k in ('grid', 'embed', 'smooth', 'condense', 'refine'):
    sec[k] = float(res.seconds.get(k, float('nan')))
h = res.hierarchy
t = time.perf_counter()
h.save(out_dir / 'hierarchy.npz')
sec['write_hierarchy'] = time.perf_counter() - t
t = time.perf_counter()
pers = h.persistent()
sec['persistent'] = time.perf_counter() - t
t = time.perf_counter()
write_labels(out_dir / 'persistent.nii.gz', pers, like=src)
sec['write_persistent'] = time.perf_counter() - t; peak['write'] = hwm_mb()
sec['total'] = time.perf_counter() - t_all
R['seconds'] = sec
R['n_levels'] = int(h.n_levels)
R['n_clusters'] = [int(h.n_clusters[0]), int(h.n_clusters[-1])]

# latencies on the full-resolution volume
ms = []
for rep in range(3):
    for lv in range(h.n_levels):
        t = time.perf_counter(); h.labels(lv); ms.append((time.perf_counter() - t) * 1e3)
R['slider_ms'] = {'median': float(np.median(ms)), 'max': float(np.max(ms)), 'n': len(ms)}
gt_all = lab > 0
pt = innermost_point(gt_all)
mid = h.labels(h.n_levels // 2)
rep_ms, add_ms = [], []
mask = None
for i in range(15):
    t = time.perf_counter(); mask = update_mask(None, mid, pt, 'replace'); rep_ms.append((time.perf_counter() - t) * 1e3)
    t = time.perf_counter(); update_mask(mask, mid, pt, 'add'); add_ms.append((time.perf_counter() - t) * 1e3)
R['click_ms'] = {'replace_median': float(np.median(rep_ms)), 'add_median': float(np.median(add_ms)),
                 'max': float(max(rep_ms + add_ms)), 'n': len(rep_ms) + len(add_ms)}
# what the widget does once per hierarchy, in its worker thread, before any click
t = time.perf_counter(); h.prepare_connected()
R['prepare_connected_ms'] = (time.perf_counter() - t) * 1e3
tc = []
for i in range(5):
    t = time.perf_counter(); _, rule = click_mask(h, pt); tc.append((time.perf_counter() - t) * 1e3)
R['tool_click_ms'] = {'first': tc[0], 'median': float(np.median(tc[1:])), 'rule': rule}
# the widget's default click at the slider's level: the connected part under the pointer,
# each at a new point (its connected lineage computed afresh)
rng = np.random.default_rng(0)
inside = np.argwhere(gt_all)
pts = [pt] + [tuple(int(v) for v in inside[k]) for k in rng.integers(0, len(inside), 4)]
cc = []
for q in pts:
    t = time.perf_counter(); h.structure(q, h.n_levels // 2, connected=True)
    cc.append((time.perf_counter() - t) * 1e3)
R['connected_click_ms'] = {'median': float(np.median(cc)), 'max': float(max(cc)), 'n': len(cc)}
peak['latency'] = hwm_mb()

def quality(gt):
    q = {'gt_ml': float(gt.sum() * np.prod(spacing) / 1000.0)}
    pt = innermost_point(gt)
    hint, click = [], []
    for lv in range(h.n_levels):
        labs = h.labels(lv)
        hint.append(dice(label_hint(labs, gt), gt))
        click.append(dice(select_cluster(labs, pt), gt))
    b = int(np.argmax(hint))
    q.update({'label_hint_best': float(hint[b]), 'best_level': b,
              'best_level_clusters': int(h.n_clusters[b]),
              'click_at_best_level': float(click[b]),
              'click_best': float(max(click)), 'click_best_level': int(np.argmax(click))})
    m, rule = click_mask(h, pt)
    q['tool_click'] = float(dice(m, gt)); q['tool_click_rule'] = rule
    q['tool_click_ml'] = float(np.count_nonzero(m) * np.prod(spacing) / 1000.0)
    if callable(getattr(h, 'click_level', None)):
        try:
            q['tool_click_level'] = int(h.click_level(pt))
        except Exception:
            pass
    q['persistent_click'] = float(dice(select_cluster(pers, pt), gt))
    q['persistent_label_hint'] = float(dice(label_hint(pers, gt), gt))
    return q

R['dice'] = {'ventricles': quality(gt_all), 'lateral_ventricles': quality(lab == 1)}
R['peak_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
R['peak_mb_after'] = peak
print('RESULT ' + json.dumps(R))
"""


def run(quick: bool = False, timeout: float = 1800.0, *, volume=None, seg=None,
        seconds=None) -> dict:
    """The benchmark (module doc). ``volume``/``seg``: other NIfTI files than the bundled
    MNI pair (tests use a tiny one); ``seconds``: another training budget."""
    vol = Path(volume) if volume is not None else SAMPLE / "mri_volume.nii.gz"
    seg = Path(seg) if seg is not None else SAMPLE / "mri_volume_seg.nii.gz"
    if not vol.exists() or not seg.exists():
        return {"error": f"volume {vol} or its labels {seg} not found"}
    budget = str(float(seconds)) if seconds is not None else (
        str(QUICK_SECONDS) if quick else "default")
    with tempfile.TemporaryDirectory(prefix="napari_cuts_bench_volume_") as tmp:
        args = [sys.executable, "-c", _CHILD, str(vol), str(seg), tmp, budget]
        try:
            cp = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
    for line in cp.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            s = out["seconds"]
            out["targets"] = {
                "segment_with_training_under_240_s": s["read"] + s["train"] + s["segment"]
                + s["write_hierarchy"] + s["persistent"] + s["write_persistent"] <= 240.0,
                "peak_under_6_gb": out["peak_mb"] <= 6 * 1024,
                "slider_under_100_ms": out["slider_ms"]["max"] <= 100.0,
                "click_under_100_ms": out["click_ms"]["max"] <= 100.0,
                "tool_click_under_100_ms": out["tool_click_ms"]["median"] <= 100.0,
                "connected_click_under_100_ms": out["connected_click_ms"]["max"] <= 100.0,
                "ventricle_click_at_best_level_ge_0.80":
                    out["dice"]["ventricles"]["click_at_best_level"] >= 0.80,
                "ventricle_persistent_ge_0.70":
                    out["dice"]["ventricles"]["persistent_click"] >= 0.70,
            }
            out["quick"] = bool(quick)
            return out
    tail = (cp.stderr or cp.stdout).strip().splitlines()[-3:] or ["no output"]
    return {"error": " | ".join(tail)[:600]}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
