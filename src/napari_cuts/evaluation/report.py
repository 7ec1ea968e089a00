"""What ``napari-cuts evaluate`` writes: the statistics, ``results.md``, the CSV and
the figures.

Statistics: for each method and seed, the mean and standard error (``std(ddof=1) /
sqrt(n)``, NaNs ignored) over images; reported values are the means of these over
seeds (``*_seed_sd`` is the spread of the per-seed means). Hausdorff/HD95 of an
empty prediction is the image diagonal (the paper's convention); ``n_empty`` counts
empty predictions (mean over seeds).
"""

from __future__ import annotations

import csv
import io as _io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..metrics import METRIC_KEYS
from .methods import METHODS, METHODS_3D, SEQ_ROW

#: Names shown in results.md.
DISPLAY = {
    "random": "random",
    "watershed": "watershed (Otsu)",
    "felzenszwalb": "Felzenszwalb (scale 1500)",
    "felzenszwalb_s200": "Felzenszwalb (scale 200, sigma 1, min_size 10)",
    "slic": "SLIC (10 segments)",
    "cuts_kmeans": "CUTS + spectral k-means",
    "cuts_persistent": "CUTS + diffusion (persistent)",
    "cuts_best": "CUTS + diffusion (best granularity)",
    "cuts_click": "CUTS + diffusion, one click (tool's own answer, no labels)",
    "cuts_click_refined": "CUTS + diffusion, one click then <= 3 grow/shrink steps (best Dice)",
    "cuts_click_whole": "CUTS + diffusion, one click, the whole cluster (every part of the image it covers)",
    "image_only_best": "no encoder (image channels alone), best granularity",
    "image_only_click": "no encoder (image channels alone), one click",
    "embedding_only_best": "embeddings alone (no image channels), best granularity",
    "embedding_only_click": "embeddings alone (no image channels), one click",
}
DISPLAY_3D = {
    "slic3d": "3D SLIC, supervoxel under the click (best setting per case: oracle)",
    "cuts_persistent": "CUTS, persistent map + label hint",
    "cuts_best": "CUTS, best level + label hint (oracle)",
    "cuts_click": "CUTS, one click (tool's own answer, no labels)",
    "cuts_click_refined": "CUTS, one click then <= 3 grow/shrink steps (best Dice)",
    "cuts_click_whole": "CUTS, one click, the whole cluster (every part of the volume it covers)",
    "image_only_best": "no encoder (image + slice context), best level + label hint (oracle)",
    "image_only_click": "no encoder (image + slice context), one click",
    "embedding_only_best": "embeddings alone (no image), best level + label hint (oracle)",
    "embedding_only_click": "embeddings alone (no image), one click",
}
#: The paper's retina figures (Dice, Hausdorff in pixels) for the methods we run.
PAPER_RETINA = {
    "source": ("CUTS: Liu, Amodio et al., arXiv 2209.11359, Table 1, retina (56 images, "
               "label-hint binarisation); as listed in shared/data/retina/README.md"),
    "methods": {
        "random": {"dice": 0.132, "hausdorff": 78.44},
        "watershed": {"dice": 0.187, "hausdorff": 61.60},
        "felzenszwalb": {"dice": 0.222, "hausdorff": 64.05},
        "slic": {"dice": 0.567, "hausdorff": 28.76},
        "cuts_kmeans": {"dice": 0.673, "hausdorff": 27.75},
        "cuts_persistent": {"dice": 0.685, "hausdorff": 27.43},
        "cuts_best": {"dice": 0.735, "hausdorff": 25.28},
    },
}


# --------------------------------------------------------------------------- statistics

def _sem(values: np.ndarray) -> float:
    v = values[np.isfinite(values)]
    if v.size < 2:
        return 0.0 if v.size == 1 else float("nan")
    return float(np.std(v, ddof=1) / math.sqrt(v.size))


def summarise(per_seed: dict) -> dict:
    """Means and SEMs over images, then means over seeds.

    ``per_seed``: ``{seed: [per-image metric dicts]}``. Returns ``{metric: mean,
    metric_sem: .., metric_seed_sd: .., "n_images": .., "n_empty": ..}``.
    """
    out: dict = {}
    seeds = list(per_seed)
    for key in METRIC_KEYS:
        means, sems = [], []
        for s in seeds:
            vals = np.array([r[key] for r in per_seed[s]], dtype=np.float64)
            means.append(float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan"))
            sems.append(_sem(vals))
        out[key] = float(np.mean(means))
        out[f"{key}_sem"] = float(np.mean(sems))
        out[f"{key}_seed_sd"] = float(np.std(means)) if len(means) > 1 else 0.0
    out["n_images"] = int(np.mean([len(per_seed[s]) for s in seeds]))
    out["n_empty"] = float(np.mean([sum(bool(r.get("empty_pred")) for r in per_seed[s])
                                    for s in seeds]))
    return out


def per_item_dice(per: dict, seeds: Sequence[int], order: Sequence[str]) -> dict:
    """``{method: Dice per image (or volume), mean over seeds}`` in ``order``."""
    return {m: np.nanmean(np.array([[r["dice"] for r in per[m][s]] for s in seeds],
                                   dtype=float), axis=0)
            for m in order if m in per}


def clean(obj):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# --------------------------------------------------------------------------- files

def write_text(path: Path, text: str) -> None:
    from ..fileutil import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_csv(path: Path, fields: Sequence[str], rows: list) -> None:
    """The rows (dicts) as CSV with these columns, floats to 6 significant digits."""
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields))
    w.writeheader()
    for row in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


# --------------------------------------------------------------------------- results.md

def _fmt(v, nd=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{nd}f}"


def _budget(result: dict) -> str:
    parts = []
    if result.get("steps") is not None:
        parts.append(f"{result['steps']} steps")
    if result.get("epochs") is not None:
        parts.append(f"{result['epochs']:g} epochs")
    if result.get("train_seconds") is not None:
        parts.append(f"{result['train_seconds']:g} s")
    if not parts:
        return ""
    return "CUTS training budget per seed: " + " or ".join(parts) + "; "


def markdown(result: dict, layout: str) -> str:
    """results.md of a 2D evaluation."""
    methods = result["methods"]
    paper = PAPER_RETINA["methods"] if layout == "retina" else {}
    lines = [
        "# napari-cuts evaluation",
        "",
        f"Data: `{result['data']}` ({layout} layout), {result['n_images']} images; "
        f"seeds {result['seeds']}; " + _budget(result) +
        f"total wall time {result['seconds']:.0f} s.",
        "",
        "Mean ± standard error over images (mean over seeds). Dice, SSIM: higher is better; "
        "Hausdorff, HD95 (pixels), ERGAS, RMSE: lower is better.",
        "",
        "| method | Dice | paper Dice | Hausdorff | paper Hausdorff | HD95 | SSIM | ERGAS | RMSE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in METHODS:
        if name not in methods:
            continue
        r = methods[name]
        p = paper.get(name, {})
        lines.append(
            f"| {DISPLAY[name]} | {_fmt(r['dice'])} ± {_fmt(r['dice_sem'])} | "
            f"{_fmt(p.get('dice'))} | {_fmt(r['hausdorff'], 2)} ± {_fmt(r['hausdorff_sem'], 2)} | "
            f"{_fmt(p.get('hausdorff'), 2)} | {_fmt(r['hd95'], 2)} | {_fmt(r['ssim'])} | "
            f"{_fmt(r['ergas'], 0)} | {_fmt(r['rmse'])} |"
        )
    lines += [
        "",
        "Notes:",
        "- Paper figures: " + PAPER_RETINA["source"] + "; they are on 56 images, ours on the "
        "images above." if paper else "- Paper figures are shown only for the retina layout.",
        "- `random` is scored as drawn (2 labels, no label hint), as the paper's code does; the "
        "other baselines and CUTS k-means/persistent use the label hint (the cluster most "
        "frequent under the ground truth).",
        "- The paper's Felzenszwalb row used scale 1500 (the official repository's early "
        "setting); the scale-200 row is the repository's later setting, shown for reference.",
        "- CUTS best granularity is an oracle: the level with the best label-hint Dice per image "
        "(all metrics of that level's mask). CUTS one click: no label hint; the structure "
        "under a click at the mask's innermost point, by the tool's own rule "
        f"({result.get('click_rule') or 'click_level'}), the same rule for every one-click row. "
        "One click + grow/shrink: that structure and up to 3 steps up and 3 down its "
        "lineage (`Hierarchy.step_level`), the candidate with the best Dice kept (a user "
        "who stops when the mask looks right).",
        "- Ablation rows (`--ablation`): the same condensation, levels and click on the "
        "encoder-normalised image channels alone (no network: `image_only_*`) and on the "
        "unit embeddings alone (no image channels: `embedding_only_*`); `cuts_click_whole`: "
        "the whole clicked cluster instead of its part connected to the click.",
        "- Hausdorff/HD95 of an empty prediction = the image diagonal (paper's convention).",
        "",
    ]
    return "\n".join(lines)


def display_3d(method: str, names_by_key: dict) -> str:
    """The results.md name of a 3D row (per-sequence rows named by their sequence)."""
    if method in DISPLAY_3D:
        return DISPLAY_3D[method]
    m = SEQ_ROW.match(method)
    name = names_by_key.get(m.group(1), m.group(1)) if m else method
    what = ("best level + label hint (oracle)" if method.endswith("_best") else
            "one click (tool's own answer)")
    return f"sequence {name} alone (its own encoder), {what}"


def markdown_3d(result: dict) -> str:
    """results.md of a 3D evaluation."""
    methods = result["methods"]
    seqs = result.get("sequences") or {}
    names_by_key = dict(zip(seqs.get("keys") or [], seqs.get("names") or []))
    lv = result.get("label_values")
    struct = ("the union of label values " + ", ".join(map(str, lv))) if lv else \
        "every non-zero label"
    split = result.get("split", "all")
    split_text = {"all": "all cases",
                  "dev": "development split (the first half of the sorted case names)",
                  "report": "report split (the second half of the sorted case names)"}[split]
    lines = [
        "# napari-cuts evaluation (3D)",
        "",
        f"Data: `{result['data']}` ({result['layout']} layout), {result['n_images']} volumes "
        f"({split_text}: {result['cases'][0]} .. {result['cases'][-1]}); structure: {struct}; "
        f"seeds {result['seeds']}; " + _budget(result).replace("per seed", "per seed (one "
        "encoder for the whole set)") + f"total wall time {result['seconds']:.0f} s." + (
            f" Sequences (one channel each, in this order): {', '.join(seqs['names'])} "
            f"(names from {seqs['source']})." if seqs.get("names") else ""),
        "",
        "Scored in 3D on each whole volume (never a mean over slices). Mean ± standard error "
        "over volumes (mean over seeds). Dice, SSIM: higher is better; Hausdorff and HD95 "
        "**in mm** (between mask surfaces, with the voxel spacing of the header), ERGAS, "
        "RMSE: lower is better.",
        "",
        "| method | Dice | Hausdorff (mm) | HD95 (mm) | SSIM | RMSE | empty |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in methods:
        r = methods[name]
        lines.append(
            f"| `{name}`: {display_3d(name, names_by_key)} | "
            f"{_fmt(r['dice'])} ± {_fmt(r['dice_sem'])} | "
            f"{_fmt(r['hausdorff'], 2)} ± {_fmt(r['hausdorff_sem'], 2)} | {_fmt(r['hd95'], 2)} | "
            f"{_fmt(r['ssim'])} | {_fmt(r['rmse'])} | {_fmt(r['n_empty'], 1)} |")
    click_rule = result.get("click_rule")
    lines += [
        "",
        "Notes:",
        "- The click is at the innermost voxel of the ground truth (largest distance to the "
        "background, `selection.innermost_point`; on a plateau of equal depth, such as a "
        "slab a few slices thick, the plateau voxel nearest its centroid), where a user "
        "would click.",
        "- `cuts_best` / `image_only_best`: the hierarchy level whose label-hint mask (the "
        "cluster most frequent under the ground truth) has the best 3D Dice, per case: an "
        "oracle. `cuts_persistent`: the label hint on the persistent-structures map.",
        "- `cuts_click` / `image_only_click`: no labels; the tool's own answer to the click "
        f"({click_rule or 'persistent map'}): the part of the clicked cluster 6-connected to "
        "the click, at the level chosen on that part's sizes; `cuts_click_whole` "
        "(`--ablation`): the whole cluster, every part of the volume it covers.",
        "- `cuts_click_refined`: the one-click structure and up to 3 grow and 3 shrink steps "
        "along its lineage (`Hierarchy.step_level`), the best 3D Dice kept (a user who stops "
        "when the mask looks right).",
        "- `image_only_*`: the same pipeline (working grid, slice context, condensation, "
        "click) on the normalised image alone, the encoder's embeddings left out; "
        "`embedding_only_*`: on the unit embeddings alone (image weight 0).",
    ]
    if any(SEQ_ROW.match(m) for m in methods):
        lines.append(
            "- `seq_<name>_best` / `seq_<name>_click`: each sequence alone: the same pipeline "
            "(its own encoder trained on that one channel with the same budget, the same "
            "condensation and click) beside all sequences together (`cuts_best`, "
            "`cuts_click`).")
    lines += [
        "- `slic3d`: `skimage.segmentation.slic` on the volume with its spacing, the "
        "supervoxel under the click, best per case over n_segments in {50, 200, 800, 3200} "
        "x compactness in {0.05, 0.1, 0.3}: an oracle like `cuts_best`.",
        "- Intensities are scaled per volume to [0, 1] between the 0.5th and 99.5th "
        "percentiles before everything. Hausdorff/HD95 of an empty prediction = the "
        "volume's diagonal in mm.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_dice(per_image_dice: dict, path: Path, layout: str, order=None,
                ylabel: str = "Dice (per image, mean over seeds)",
                title: str = "Dice per image") -> None:
    """``dice.png``: a box plot of the per-image Dice of each method, the points over it
    (and the paper's figures for the retina layout)."""
    from ..fileutil import save_figure

    plt = _pyplot()
    names = [m for m in (METHODS if order is None else order) if m in per_image_dice]
    data = [np.asarray(per_image_dice[m], dtype=float) for m in names]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 4.2), dpi=110)
    ax.boxplot(data, showfliers=False, widths=0.55)
    ax.set_xticks(range(1, len(names) + 1))
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.18, 0.18, d.size), d, s=9, alpha=0.55, color="tab:blue",
                   zorder=3)
    if layout == "retina":
        for i, m in enumerate(names, start=1):
            p = PAPER_RETINA["methods"].get(m)
            if p:
                ax.scatter([i], [p["dice"]], marker="D", color="tab:red", s=28, zorder=4,
                           label="paper (56 images)" if i == 1 else None)
        ax.legend(loc="upper left", fontsize=7)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def _panel(ax, img, mask, gt, title: str, dice_text: str) -> str:
    """Draw ``img`` with ``mask`` over it (green for the ground truth, magenta with the
    ground truth's outline for a method); returns the panel's title."""
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
    if mask is None:
        return title
    over = np.zeros(mask.shape + (4,), dtype=float)
    colour = (0.1, 0.9, 0.2) if title == "ground truth" else (1.0, 0.2, 0.6)
    over[mask] = (*colour, 0.5)
    ax.imshow(over, interpolation="nearest")
    if title == "ground truth":
        return title
    ax.contour(gt.astype(float), levels=[0.5], colors="lime", linewidths=0.6)
    return f"{title}\n{dice_text}"


def figure_examples(samples: list, examples: dict, path: Path) -> None:
    """``examples.png`` of a 2D evaluation. Rows: example images (``examples``: image
    index -> method -> (mask, Dice)); columns: image, ground truth, each method's mask."""
    from ..fileutil import save_figure

    plt = _pyplot()
    idx = sorted(examples)
    names = [m for m in METHODS if any(m in examples[i] for i in idx)]
    cols = 2 + len(names)
    fig, axes = plt.subplots(len(idx), cols, figsize=(1.6 * cols, 1.7 * len(idx) + 0.3),
                             dpi=100, squeeze=False)
    for r, i in enumerate(idx):
        s = samples[i]
        img = s.image[..., 0] if s.image.shape[-1] == 1 else s.image[..., :3]
        panels = [("image", None, None), ("ground truth", s.mask, None)] + [
            (m, *examples[i].get(m, (None, None))) for m in names]
        for c, (title, m, d) in enumerate(panels):
            ax = axes[r, c]
            title = _panel(ax, img, m, s.mask, title, f"Dice {d:.2f}" if d is not None else "")
            if r == 0 or c >= 2:
                ax.set_title(title, fontsize=6)
            if c == 0:
                ax.set_ylabel(s.name, fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("masks (magenta) against the ground truth (green outline)", fontsize=8)
    save_figure(fig, path)


def figure_examples_3d(examples: dict, path: Path, order: Sequence[str] = METHODS_3D) -> None:
    """``examples.png`` of a 3D evaluation. Rows: a few cases, the axial slice through
    the click (``examples``: case -> {"z", "image", "gt", "masks": method -> (mask
    slice, 3D Dice)}); columns: image, ground truth, each method's mask on that slice."""
    from ..fileutil import save_figure

    plt = _pyplot()
    rows = list(examples.items())
    names = [m for m in order if any(m in ex["masks"] for _, ex in rows)]
    cols = 2 + len(names)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.7 * cols, 1.8 * len(rows) + 0.4),
                             dpi=100, squeeze=False)
    for r, (case, ex) in enumerate(rows):
        panels = [("image", None, None), ("ground truth", ex["gt"], None)] + [
            (m, *ex["masks"][m]) for m in names if m in ex["masks"]]
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(panels):
                ax.axis("off")
                continue
            title, m, d = panels[c]
            title = _panel(ax, ex["image"], m, ex["gt"], title,
                           f"3D Dice {d:.2f}" if d is not None else "")
            ax.set_title(title, fontsize=6)
            if c == 0:
                ax.set_ylabel(f"{case} z={ex['z']}", fontsize=6)
    fig.suptitle("axial slice through the click: masks (magenta), ground truth (green)",
                 fontsize=8)
    save_figure(fig, path)
