"""``napari-cuts evaluate``: the runs. :func:`run_evaluation` scores a folder of 2D
images (or, for a folder of volumes, hands it to :func:`run_evaluation_3d`, which
scores each volume as a whole). Both train one encoder per seed on the whole set,
score every method's mask (:mod:`.methods`) into one :class:`Scores`, and write the
same files (:func:`_write_outputs`): ``results.json``, ``results.md``, a CSV of every
mask's scores, ``dice.png`` and ``examples.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .. import __version__
from ..baselines import BASELINES
from ..errors import InputError
from ..images import Cancel, Progress, check_cancel, report
from ..metrics import METRIC_KEYS, all_metrics, score_3d
from ..selection import innermost_point
from . import report as R
from .datasets import load_dataset
from .methods import (
    CUTS_METHODS, METHODS, METHODS_3D, SEQUENCE_ROW_KINDS, VARIANTS, baseline_masks,
    choose_methods, cuts_masks, sequence_methods, slic3d_mask, variant_masks,
)
from .volumes import load_volumes, sequence_keys, volume_layout

#: Images (or volumes) shown in examples.png.
N_EXAMPLES = 4
#: The columns of per_image.csv (2D) and per_case.csv (3D).
PER_IMAGE_FIELDS = ("method", "seed", "image", *METRIC_KEYS, "empty_pred", "level",
                    "n_clusters", "setting")
PER_CASE_FIELDS = ("method", "seed", "case", *METRIC_KEYS, "empty_pred", "gt_voxels",
                   "pred_voxels", "level", "n_clusters", "setting")


class Scores:
    """Every scored mask of a run: the metric dicts by method and seed (``per``), the
    CSV rows, the example panels kept and the one-click rules seen.

    ``score(i, mask)``: the metrics of a mask of item ``i``; ``item(i, mask)``: the
    CSV columns naming it; ``keep(i, method, mask, metrics)``: called for the first
    seed's masks, to keep what the examples figure shows."""

    def __init__(self, chosen: Sequence[str], seeds: Sequence[int], *,
                 score: Callable, item: Callable, keep: Callable):
        self.seeds = list(seeds)
        self.per: dict = {m: {s: [] for s in self.seeds} for m in chosen}
        self.rows: list = []
        self.click_rules: set = set()
        self._score, self._item, self._keep = score, item, keep

    def record(self, method: str, seed_list, i: int, mask, info: Optional[dict] = None):
        r = self._score(i, mask)
        info = info or {}
        if method.endswith("_click") and "setting" in info:
            self.click_rules.add(info["setting"])
        item = self._item(i, mask)
        for s in seed_list:
            self.per[method][s].append(r)
            self.rows.append({"method": method, "seed": s, **item,
                              **{k: r[k] for k in METRIC_KEYS}, "empty_pred": int(r["empty_pred"]),
                              "level": info.get("level", ""),
                              "n_clusters": info.get("n_clusters", ""),
                              "setting": info.get("setting", "")})
        if seed_list[0] == self.seeds[0]:
            self._keep(i, method, mask, r)

    def summary(self, order: Sequence[str]) -> dict:
        return {m: R.summarise(self.per[m]) for m in order if m in self.per}

    def click_rule(self) -> Optional[str]:
        return ", ".join(sorted(self.click_rules)) or None


# --------------------------------------------------------------------------- shared steps

def _check_seeds_seconds(seeds, seconds) -> list[int]:
    """The seeds as ints (at least one, distinct); a clear error for a bad budget."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise InputError("give at least one seed.")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"seeds {seeds} repeat; give distinct seeds.")
    if seconds is not None and seconds <= 0:
        raise InputError(f"seconds must be positive (got {seconds}).")
    return seeds


def _training_progress(progress: Progress, base: int, n: int, total: int, seed: int):
    """The training's progress mapped onto the ``n`` steps after ``base`` of the run."""
    def cb(d, t, msg):
        frac = min(max(d / t, 0.0), 1.0) if t else 0.0
        report(progress, base + int(frac * n), total, f"seed {seed}: training: {msg}")
    return cb


def _output_dir(out_dir, save_hierarchies: bool) -> tuple[Path, Optional[Path]]:
    """The output folder (created) and its ``hierarchies/`` folder when wanted."""
    from ..fileutil import make_output_dir

    out = make_output_dir(out_dir)
    hier_dir = None
    if save_hierarchies:
        hier_dir = out / "hierarchies"
        hier_dir.mkdir(exist_ok=True)
    return out, hier_dir


def _example_indices(n: int) -> list[int]:
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, min(N_EXAMPLES, n))})


def _result(scores: Scores, order, *, t_start: float, n: int, seeds, data_dir, layout: str,
            about_data: dict, trained: bool, train_seconds, epochs, about_training: dict,
            device: str, timings: dict, levels: dict, about_levels: dict, notes: list) -> dict:
    """The ``results.json`` content: the keys both runs share, each run's own
    (``about_*``) in their places."""
    return R.clean({
        "methods": scores.summary(order),
        "seconds": round(time.perf_counter() - t_start, 2),
        "n_images": n,
        "seeds": seeds,
        "data": str(Path(data_dir)),
        "layout": layout,
        **about_data,
        "click_rule": scores.click_rule(),
        "train_seconds": train_seconds if trained else None,
        "epochs": epochs if trained else None,
        **about_training,
        "device": device,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "levels": levels,
        **about_levels,
        "notes": notes,
        "napari_cuts_version": __version__,
    })


def _write_outputs(out: Path, result: dict, scores: Scores, *, csv_name: str, fields,
                   order, layout: str, markdown: str, draw_examples: Callable,
                   **dice_figure) -> None:
    """The CSV, ``dice.png``, ``examples.png``, ``results.md`` and, last,
    ``results.json`` (each written atomically)."""
    from ..fileutil import write_json

    R.write_csv(out / csv_name, fields, scores.rows)
    R.figure_dice(R.per_item_dice(scores.per, scores.seeds, order), out / "dice.png", layout,
                  order=order, **dice_figure)
    draw_examples(out / "examples.png")
    R.write_text(out / "results.md", markdown)
    write_json(out / "results.json", result)


# --------------------------------------------------------------------------- 2D

def run_evaluation(data_dir, out_dir, *, seeds: Sequence[int] = (1, 2, 3),
                   steps: Optional[int] = None, seconds: Optional[float] = None,
                   epochs: Optional[float] = None,
                   methods: Optional[Sequence[str]] = None, limit: Optional[int] = None,
                   device: str = "auto", progress: Progress = None,
                   cancel: Cancel = None, labels: Optional[Sequence[float]] = None,
                   ablation: bool = False, split: str = "all",
                   cases: Optional[Sequence[str]] = None, volumes: str = "3d",
                   save_hierarchies: bool = False, init=None) -> dict:
    """Evaluate the baselines and the CUTS variants on a labelled folder.

    ``init``: every seed's encoder starts from these weights (a path, or True for the
    packaged warm-start weights of the images' channel count) and is fine-tuned for the
    budget; None starts as ``segment`` does (:func:`napari_cuts.pipeline.get_encoder`:
    the packaged weights for a budget in steps, given or default, else from scratch).

    A folder of volumes (a Decathlon folder, or NIfTI volumes with ``*_seg.nii.gz``
    masks) is scored in 3D by :func:`run_evaluation_3d` (``labels``, ``ablation``,
    ``split``, ``cases``, ``save_hierarchies``: see there); ``volumes="slices"`` keeps
    the per-slice samples of :mod:`.datasets` instead. Everything below is the 2D path.

    ``data_dir``: retina or NIfTI layout (:func:`.datasets.load_dataset`). ``out_dir``:
    created if needed; receives ``results.json``, ``results.md``, ``per_image.csv``,
    ``dice.png`` and ``examples.png`` (each written atomically). ``seeds``: one encoder
    is trained per seed on all images; ``steps``/``seconds``/``epochs``: its budget
    (default :func:`napari_cuts.budget.default_steps` of all the images). ``methods``: a subset of :data:`.methods.METHODS`
    (default all but :data:`.methods.ABLATION_METHODS`, which ``ablation=True`` adds).
    ``limit``: only the first N images (slices, for volumes). ``save_hierarchies``: also
    write ``hierarchies/<image>_seed<S>[_image_only|_embedding_only].npz``. Returns the
    ``results.json`` content: ``{"methods": {name: {"dice": .., "hausdorff": .., "hd95":
    .., "ssim": .., "ergas": .., "rmse": .., "<metric>_sem": .., "<metric>_seed_sd": ..,
    "n_images": .., "n_empty": ..}}, "seconds": .., "n_images": .., "seeds": [...], ...}``.
    """
    if volumes not in ("3d", "slices"):
        raise InputError(f"volumes must be '3d' or 'slices' (got {volumes!r}).")
    if volumes == "3d" and volume_layout(data_dir) is not None:
        return run_evaluation_3d(data_dir, out_dir, seeds=seeds, steps=steps, seconds=seconds,
                                 epochs=epochs, init=init,
                                 methods=methods, limit=limit, device=device,
                                 progress=progress, cancel=cancel, labels=labels,
                                 ablation=ablation, split=split, cases=cases,
                                 save_hierarchies=save_hierarchies)
    if labels is not None or split != "all" or cases is not None:
        raise InputError("--label, --split and --cases apply to folders of volumes "
                         "(Decathlon imagesTr/labelsTr, or NIfTI volumes with *_seg.nii.gz "
                         "masks) scored in 3D; this folder holds 2D images.")
    t_start = time.perf_counter()
    chosen, _ = choose_methods(methods, METHODS, ablation)
    bad = [m for m in chosen if m not in METHODS]  # no per-sequence rows in 2D
    if bad or not chosen:
        raise InputError(f"unknown method(s) {bad or chosen}; choose from {', '.join(METHODS)}.")
    seeds = _check_seeds_seconds(seeds, seconds)
    out, hier_dir = _output_dir(out_dir, save_hierarchies)

    ds = load_dataset(data_dir, limit=limit)
    samples = ds.samples
    n = len(samples)
    cuts_wanted = {m for m in chosen if m in CUTS_METHODS}
    base_wanted = [m for m in chosen if m in BASELINES]
    n_seed_units = 2 * n if cuts_wanted else 0  # training counts as n units, then n images
    total = (n if base_wanted else 0) + len(seeds) * n_seed_units + 1
    done = 0
    examples: dict = {i: {} for i in _example_indices(n)}
    timings: dict = {}
    level_info: dict = {"n_levels": [], "best_level_clusters": [], "persistent_clusters": []}

    def keep(i, method, mask, r):
        if i in examples:
            examples[i][method] = (mask, r["dice"])

    scores = Scores(chosen, seeds, score=lambda i, mask: all_metrics(mask, samples[i].mask),
                    item=lambda i, mask: {"image": samples[i].name}, keep=keep)

    # Baselines: deterministic ones once (they count for every seed), random per seed.
    if base_wanted:
        t0 = time.perf_counter()
        for i, smp in enumerate(samples):
            check_cancel(cancel)
            report(progress, done, total, f"baselines: image {i + 1}/{n}")
            for m, seed_list, mask in baseline_masks(smp, seeds, base_wanted):
                scores.record(m, seed_list, i, mask)
            done += 1
        timings["baselines"] = time.perf_counter() - t0

    # CUTS: one encoder per seed on all images, then every image.
    warm_start = None
    if cuts_wanted:
        from ..pipeline import get_encoder

        images = [s.image for s in samples]
        points = [innermost_point(s.mask) for s in samples]
        if init is True:
            from ..encoder import packaged_weights

            if packaged_weights(1 if images[0].ndim == 2 else images[0].shape[-1]) is None:
                raise InputError("the package ships no warm-start weights for these images.")
        for seed in seeds:
            check_cancel(cancel)
            base = done
            report(progress, done, total, f"seed {seed}: training the encoder")
            t0 = time.perf_counter()
            enc, _ = get_encoder(images, steps=steps, epochs=epochs, seconds=seconds, seed=seed,
                                 device=device, warm_start=init,
                                 progress=_training_progress(progress, base, n, total, seed),
                                 cancel=cancel)
            warm_start = enc.metadata.get("warm_start")
            timings["train"] = timings.get("train", 0.0) + time.perf_counter() - t0
            done = base + n
            for i, smp in enumerate(samples):
                check_cancel(cancel)
                report(progress, done, total, f"seed {seed}: image {i + 1}/{n}")
                masks, info = cuts_masks(enc, smp, points[i], seed, cuts_wanted, cancel,
                                         timings, hier_dir)
                for k, v in info.items():
                    if k in level_info:
                        level_info[k].append(v)
                for m in METHODS:
                    if m in masks:
                        scores.record(m, [seed], i, *masks[m])
                done += 1

    report(progress, done, total, "writing results")
    check_cancel(cancel)
    result = _result(
        scores, METHODS, t_start=t_start, n=n, seeds=seeds, data_dir=data_dir,
        layout=ds.layout, about_data={}, trained=bool(cuts_wanted),
        train_seconds=seconds, epochs=epochs,
        about_training={"warm_start": warm_start if cuts_wanted else None,
                        "steps": steps if cuts_wanted else None},
        device=device, timings=timings,
        levels={k: (float(np.mean(v)) if v else None) for k, v in level_info.items()},
        about_levels={"paper": R.PAPER_RETINA if ds.layout == "retina" else None},
        notes=ds.notes)
    _write_outputs(out, result, scores, csv_name="per_image.csv", fields=PER_IMAGE_FIELDS,
                   order=METHODS, layout=ds.layout, markdown=R.markdown(result, ds.layout),
                   draw_examples=lambda path: R.figure_examples(samples, examples, path))
    report(progress, total, total, "done")
    return result


# --------------------------------------------------------------------------- 3D

def _volume_runs(chosen, seq_keys, n_ch: int) -> list:
    """``(run key, channel or None, {row prefix: rows wanted})`` of every encoder a seed
    trains: all channels (the :data:`VARIANTS` rows), then one per sequence that has rows
    wanted (``seq_<key>``: that channel alone)."""
    runs = []
    wanted_by = {prefix: {m for m in chosen if m.startswith(prefix + "_")}
                 for prefix in VARIANTS}
    if any(wanted_by.values()):
        runs.append(("all", None, wanted_by))
    for c, key in enumerate(seq_keys or []):
        mine = {m for m in chosen if m in (f"seq_{key}_{k}" for k in SEQUENCE_ROW_KINDS)}
        if mine and n_ch > 1:
            runs.append((f"seq_{key}", c, {f"seq_{key}": mine}))
    return runs


def _run_info(prev: dict, enc, seed: int, seq_names, channel, wanted_run: dict) -> dict:
    """What one run's encoder was trained on (``results.json["runs"][key]``), with this
    seed's steps and seconds added to the earlier seeds'."""
    k = int(enc.metadata.get("context_slices", 0) or 0)
    return {
        "sequences": (list(seq_names) if channel is None else [seq_names[channel]])
        if seq_names else None,
        "channel": channel,
        "encoder_in_channels": int(enc.in_channels),
        "context_slices": k,
        # the encoder reads 2k+1 neighbouring slices of every channel
        "channels": int(enc.in_channels) // (2 * k + 1),
        "rows": sorted(m for w in wanted_run.values() for m in w),
        # what the budget bought, seed by seed (the same budget is not the same number
        # of steps when the machine is busy)
        "steps": {**prev.get("steps", {}), str(seed): enc.metadata.get("steps")},
        "train_seconds_used": {**prev.get("train_seconds_used", {}),
                               str(seed): enc.metadata.get("seconds_used")},
    }


def run_evaluation_3d(data_dir, out_dir, *, seeds: Sequence[int] = (1, 2, 3),
                      steps: Optional[int] = None, seconds: Optional[float] = None,
                      epochs: Optional[float] = None, init=None,
                      methods: Optional[Sequence[str]] = None, limit: Optional[int] = None,
                      device: str = "auto", progress: Progress = None, cancel: Cancel = None,
                      labels: Optional[Sequence[float]] = None, ablation: bool = False,
                      split: str = "all", cases: Optional[Sequence[str]] = None,
                      save_hierarchies: bool = False) -> dict:
    """Score a folder of volumes in 3D (``napari-cuts evaluate`` on volumes).

    ``data_dir``: a Decathlon folder (``imagesTr/``, ``labelsTr/``, same file names) or
    NIfTI volumes with ``case_seg.nii.gz`` masks (``case.nii.gz``, or one
    ``case_<seq>.nii.gz`` per sequence: :func:`.volumes.load_volumes`). ``labels``: the
    structure is the union of these label values (rounded; default every non-zero
    label). ``split`` / ``cases`` / ``limit``: which cases
    (:func:`.datasets.select_cases`; ``"dev"`` is the first half of the sorted names,
    ``"report"`` the rest). For each seed ONE encoder is trained on all the chosen
    volumes (:func:`napari_cuts.pipeline.train_volume_encoder`: ``steps``, ``seconds`` or
    ``epochs``, by default the step rule of all the volumes; ``init`` its start point as
    in :func:`run_evaluation`), then each volume gets one hierarchy
    (:func:`napari_cuts.pipeline.segment_volume`). Methods: :data:`.methods.METHODS_3D`
    (the ablation rows only with ``ablation`` or when named). With ``ablation`` on
    volumes of two or more sequences, also ``seq_<key>_best`` and ``seq_<key>_click``
    for every sequence (:func:`.methods.sequence_methods`): the same pipeline on that
    one channel, with its own encoder trained for the same budget (one more training
    per sequence and seed); ``<key>`` is the sequence name
    (:func:`.volumes.sequence_key`), or the channel index when the data names none.
    ``save_hierarchies``: also write
    ``hierarchies/<case>_seed<S>[_image_only|_embedding_only|_seq_<key>].npz``.

    Writes ``results.json`` (``{"methods": {name: {"dice", "hausdorff", "hd95", "ssim",
    "ergas", "rmse", ...}}, "seconds": .., "sequences": .., "runs": ..}``, Hausdorff in
    mm; ``runs``: what each encoder was trained on, its input channels as recorded by the
    encoder), ``results.md``, ``per_case.csv``, ``dice.png`` and ``examples.png``;
    returns the JSON content.
    """
    t_start = time.perf_counter()
    chosen, bad = choose_methods(methods, METHODS_3D, ablation)
    if bad or not chosen:
        raise InputError(f"unknown method(s) {bad or chosen} for volumes; choose from "
                         f"{', '.join(METHODS_3D)}, or seq_<sequence>_best / "
                         "seq_<sequence>_click on volumes of several sequences.")
    seeds = _check_seeds_seconds(seeds, seconds)

    vs = load_volumes(data_dir, labels=labels, split=split, cases=cases, limit=limit)
    vols = vs.volumes
    n = len(vols)
    n_ch = 1 if vols[0].image.ndim == 3 else vols[0].image.shape[-1]
    seq_names = list(vs.sequences) if vs.sequences else None
    seq_keys = sequence_keys(seq_names) if seq_names else None
    seq_rows = sequence_methods(seq_keys) if (seq_keys and n_ch > 1) else []
    if methods is None and ablation:
        chosen += seq_rows
    unknown = [m for m in chosen if m not in METHODS_3D and m not in seq_rows]
    if unknown:
        have = (f"its sequences give {', '.join(seq_rows)}" if seq_rows else
                "its volumes have one channel, so there are no per-sequence rows")
        raise InputError(f"method(s) {', '.join(unknown)} do not fit {data_dir}: {have}.")
    order = [*METHODS_3D, *seq_rows]
    chosen = [m for m in order if m in chosen]

    out, hier_dir = _output_dir(out_dir, save_hierarchies)
    runs = _volume_runs(chosen, seq_keys, n_ch)
    total = (n if "slic3d" in chosen else 0) + len(seeds) * len(runs) * 2 * n + 1
    done = 0
    timings: dict = {}
    n_levels: list = []
    runs_info: dict = {}
    points = [innermost_point(v.mask) for v in vols]
    examples: dict = {}
    for i in _example_indices(n):
        z = points[i][0]
        img = vols[i].image if vols[i].image.ndim == 3 else vols[i].image[..., 0]
        examples[vols[i].name] = {"z": z, "image": img[z], "gt": vols[i].mask[z], "masks": {}}

    def keep(i, method, mask, r):
        ex = examples.get(vols[i].name)
        if ex is not None:
            ex["masks"][method] = (np.asarray(mask)[ex["z"]], r["dice"])

    scores = Scores(
        chosen, seeds, score=lambda i, mask: score_3d(mask, vols[i].mask, vols[i].spacing),
        item=lambda i, mask: {"case": vols[i].name, "gt_voxels": int(vols[i].mask.sum()),
                              "pred_voxels": int(np.count_nonzero(mask))},
        keep=keep)

    if "slic3d" in chosen:
        t0 = time.perf_counter()
        for i, v in enumerate(vols):
            check_cancel(cancel)
            report(progress, done, total, f"slic3d: volume {i + 1}/{n}")
            scores.record("slic3d", seeds, i, *slic3d_mask(v, points[i]))
            done += 1
        timings["slic3d"] = time.perf_counter() - t0

    if runs:
        from ..pipeline import train_volume_encoder

        for seed in seeds:
            for run_key, channel, wanted_run in runs:
                check_cancel(cancel)
                base = done
                what = "all sequences" if channel is None or seq_names is None else \
                    f"sequence {seq_names[channel]} alone"
                label = f"seed {seed}" + ("" if run_key == "all" else f", {what}")
                report(progress, done, total, f"{label}: training one encoder on {n} volumes")
                images = [v.image if channel is None else v.image[..., channel] for v in vols]
                t0 = time.perf_counter()
                enc = train_volume_encoder(
                    images, spacing=[v.spacing for v in vols], steps=steps, epochs=epochs,
                    seconds=seconds, seed=seed, device=device, warm_start=init,
                    progress=_training_progress(progress, base, n, total, seed), cancel=cancel)
                tkey = "train" if run_key == "all" else f"train_{run_key}"
                timings[tkey] = timings.get(tkey, 0.0) + time.perf_counter() - t0
                runs_info[run_key] = _run_info(runs_info.get(run_key, {}), enc, seed,
                                               seq_names, channel, wanted_run)
                done = base + n
                for i, v in enumerate(vols):
                    check_cancel(cancel)
                    report(progress, done, total, f"{label}: volume {i + 1}/{n} ({v.name})")
                    for prefix, wanted in wanted_run.items():
                        if not wanted:
                            continue
                        masks, res = variant_masks(
                            enc, images[i], v.mask, points[i], name=v.name, seed=seed,
                            prefix=prefix, wanted=wanted, cancel=cancel, timings=timings,
                            save_dir=hier_dir, spacing=v.spacing)
                        if prefix == "cuts":
                            n_levels.append(int(res.hierarchy.n_levels))
                        t0 = time.perf_counter()
                        for m in order:
                            if m in masks:
                                scores.record(m, [seed], i, *masks[m])
                        timings["scoring"] = timings.get("scoring", 0.0) + time.perf_counter() - t0
                    done += 1

    report(progress, done, total, "writing results")
    check_cancel(cancel)
    result = _result(
        scores, order, t_start=t_start, n=n, seeds=seeds, data_dir=data_dir, layout=vs.layout,
        about_data={
            "scoring": "3d",
            "units": {"hausdorff": "mm", "hd95": "mm"},
            "label_values": vs.label_values,
            "split": split,
            "cases": [v.name for v in vols],
            "sequences": ({"names": seq_names, "keys": seq_keys, "source": vs.sequence_source}
                          if seq_names else None),
            "runs": runs_info},
        trained=bool(runs), train_seconds=seconds, epochs=epochs,
        about_training={"steps": steps},
        device=device, timings=timings,
        levels={"n_levels": float(np.mean(n_levels)) if n_levels else None},
        about_levels={}, notes=vs.notes)
    _write_outputs(out, result, scores, csv_name="per_case.csv", fields=PER_CASE_FIELDS,
                   order=order, layout=vs.layout, markdown=R.markdown_3d(result),
                   draw_examples=lambda path: R.figure_examples_3d(examples, path, order=order),
                   ylabel="3D Dice (per volume, mean over seeds)", title="3D Dice per volume")
    report(progress, total, total, "done")
    return result
