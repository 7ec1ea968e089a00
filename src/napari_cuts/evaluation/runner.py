"""``napari-cuts evaluate``: the runs. One driver (:func:`_evaluate`) does what every
run does: check the seeds and the budget, score the baselines once, train one encoder
per seed (and per run: see :class:`Volumes`) on the whole set, segment and score every
case, report progress, honour cancellation, and write the same files
(:func:`_write_outputs`): ``results.json``, ``results.md``, a CSV of every mask's scores,
``dice.png`` and ``examples.png``.

What differs between a folder of 2D images and a folder of volumes is supplied by a
*case source* (:class:`Images`, :class:`Volumes`; the interface is :class:`Cases`): how
the cases are loaded, which methods exist, how an encoder is trained, how a case is
segmented and scored, and what the results add. :func:`run_evaluation` picks the source
(a folder of volumes is scored in 3D unless ``volumes="slices"``);
:func:`run_evaluation_3d` is the volumes entry.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

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


def _example_indices(n: int) -> list[int]:
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, min(N_EXAMPLES, n))})


# --------------------------------------------------------------------------- case sources

class Cases:
    """A layout's part of a run: what the driver (:func:`_evaluate`) asks of it, and the
    defaults both layouts share. Built from the run's arguments (checking the method
    names); :meth:`load` then reads the cases and sets ``n``, ``layout``, ``notes``,
    ``chosen`` (the methods scored), ``order`` (the table order of the rows),
    ``has_baselines`` and ``runs``: ``(run key, channel or None, {row prefix: rows
    wanted})`` of every encoder a seed trains (none when no CUTS row is wanted).

    Per case ``i``: ``baseline_rows(i, seeds)`` yields ``(method, seeds it counts for,
    mask, info or None)``; ``train(run, seed, budget, progress, cancel)`` returns the
    run's encoder, trained on every case; ``segment(run, encoder, i, seed, cancel,
    timings, hier_dir)`` yields ``{method: (mask, info)}`` groups, each scored as it
    comes; ``score(i, mask)``: a mask's metrics and the CSV columns naming the case;
    ``keep(i, method, mask, metrics)``: the first seed's masks, for examples.png.
    ``about_data()``, ``about_training(steps)``, ``levels()`` and ``about_levels()``
    fill their places in results.json; ``markdown(result)`` and ``draw_examples(path)``
    write results.md and examples.png; ``csv_name``, ``fields`` and ``dice_figure`` the
    CSV and dice.png."""

    unit = "case"            # the word in progress messages
    training_text = ""       # the progress message before each training
    baseline_key = ""        # the timings key and progress prefix of the baselines
    dice_figure: dict = {}   # extra keyword arguments of report.figure_dice

    def before_training(self, init) -> None:
        """Checks and preparation once, before the first encoder is trained."""

    def label(self, seed: int, run) -> str:
        return f"seed {seed}"

    def case_text(self, i: int) -> str:
        return f"{self.unit} {i + 1}/{self.n}"

    def about_data(self) -> dict:
        return {}

    def about_levels(self) -> dict:
        return {}


class Images(Cases):
    """A folder of 2D images (:func:`.datasets.load_dataset`: retina layout, or the
    per-slice samples of NIfTI volumes); methods :data:`.methods.METHODS`; one encoder
    per seed (:func:`napari_cuts.pipeline.get_encoder`); each image scored in 2D
    (:func:`napari_cuts.metrics.all_metrics`)."""

    unit = "image"
    baseline_key = "baselines"
    training_text = "training the encoder"
    csv_name = "per_image.csv"
    fields = PER_IMAGE_FIELDS

    def __init__(self, data_dir, *, methods, ablation: bool, limit):
        chosen, _ = choose_methods(methods, METHODS, ablation)
        bad = [m for m in chosen if m not in METHODS]  # no per-sequence rows in 2D
        if bad or not chosen:
            raise InputError(f"unknown method(s) {bad or chosen}; choose from "
                             f"{', '.join(METHODS)}.")
        self.data_dir, self.limit, self.chosen, self.order = data_dir, limit, chosen, METHODS

    def load(self) -> None:
        ds = load_dataset(self.data_dir, limit=self.limit)
        self.samples = ds.samples
        self.n, self.layout, self.notes = len(ds.samples), ds.layout, ds.notes
        self.base_wanted = [m for m in self.chosen if m in BASELINES]
        self.has_baselines = bool(self.base_wanted)
        cuts_wanted = {m for m in self.chosen if m in CUTS_METHODS}
        self.runs = [("all", None, cuts_wanted)] if cuts_wanted else []
        self.examples: dict = {i: {} for i in _example_indices(self.n)}
        self.level_info: dict = {"n_levels": [], "best_level_clusters": [],
                                 "persistent_clusters": []}
        self.warm_start = None

    def baseline_rows(self, i, seeds):
        # deterministic baselines once (they count for every seed), random per seed
        for m, seed_list, mask in baseline_masks(self.samples[i], seeds, self.base_wanted):
            yield m, seed_list, mask, None

    def before_training(self, init) -> None:
        self.points = [innermost_point(s.mask) for s in self.samples]
        if init is True:
            from ..encoder import packaged_weights

            img = self.samples[0].image
            if packaged_weights(1 if img.ndim == 2 else img.shape[-1]) is None:
                raise InputError("the package ships no warm-start weights for these images.")

    def train(self, run, seed, budget, progress, cancel):
        from ..pipeline import get_encoder

        enc, _ = get_encoder([s.image for s in self.samples], seed=seed, progress=progress,
                             cancel=cancel, **budget)
        self.warm_start = enc.metadata.get("warm_start")
        return enc

    def segment(self, run, enc, i, seed, cancel, timings, hier_dir):
        masks, info = cuts_masks(enc, self.samples[i], self.points[i], seed, run[2], cancel,
                                 timings, hier_dir)
        for k, v in info.items():
            if k in self.level_info:
                self.level_info[k].append(v)
        yield masks

    def score(self, i, mask):
        return all_metrics(mask, self.samples[i].mask), {"image": self.samples[i].name}

    def keep(self, i, method, mask, metrics):
        if i in self.examples:
            self.examples[i][method] = (mask, metrics["dice"])

    def about_training(self, steps):
        trained = bool(self.runs)
        return {"warm_start": self.warm_start if trained else None,
                "steps": steps if trained else None}

    def levels(self):
        return {k: (float(np.mean(v)) if v else None) for k, v in self.level_info.items()}

    def about_levels(self):
        return {"paper": R.PAPER_RETINA if self.layout == "retina" else None}

    def markdown(self, result):
        return R.markdown(result, self.layout)

    def draw_examples(self, path):
        R.figure_examples(self.samples, self.examples, path)


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


class Volumes(Cases):
    """A folder of volumes (:func:`.volumes.load_volumes`); methods
    :data:`.methods.METHODS_3D` and, with several sequences, the per-sequence rows; per
    seed one encoder on all channels and one per sequence with rows wanted
    (:func:`napari_cuts.pipeline.train_volume_encoder`); each volume scored as a whole
    (:func:`napari_cuts.metrics.score_3d`, Hausdorff in mm)."""

    unit = "volume"
    baseline_key = "slic3d"
    csv_name = "per_case.csv"
    fields = PER_CASE_FIELDS
    dice_figure = {"ylabel": "3D Dice (per volume, mean over seeds)",
                   "title": "3D Dice per volume"}

    def __init__(self, data_dir, *, methods, ablation: bool, limit, labels, split, cases):
        chosen, bad = choose_methods(methods, METHODS_3D, ablation)
        if bad or not chosen:
            raise InputError(f"unknown method(s) {bad or chosen} for volumes; choose from "
                             f"{', '.join(METHODS_3D)}, or seq_<sequence>_best / "
                             "seq_<sequence>_click on volumes of several sequences.")
        self.data_dir, self.limit, self.labels, self.split, self.cases = (
            data_dir, limit, labels, split, cases)
        self.methods, self.ablation, self.chosen = methods, ablation, chosen

    def load(self) -> None:
        vs = load_volumes(self.data_dir, labels=self.labels, split=self.split,
                          cases=self.cases, limit=self.limit)
        self.vs, vols = vs, vs.volumes
        self.vols, self.n, self.layout, self.notes = vols, len(vols), vs.layout, vs.notes
        self.training_text = f"training one encoder on {self.n} volumes"
        n_ch = 1 if vols[0].image.ndim == 3 else vols[0].image.shape[-1]
        self.seq_names = seq_names = list(vs.sequences) if vs.sequences else None
        self.seq_keys = seq_keys = sequence_keys(seq_names) if seq_names else None
        seq_rows = sequence_methods(seq_keys) if (seq_keys and n_ch > 1) else []
        chosen = self.chosen
        if self.methods is None and self.ablation:
            chosen = chosen + seq_rows
        unknown = [m for m in chosen if m not in METHODS_3D and m not in seq_rows]
        if unknown:
            have = (f"its sequences give {', '.join(seq_rows)}" if seq_rows else
                    "its volumes have one channel, so there are no per-sequence rows")
            raise InputError(f"method(s) {', '.join(unknown)} do not fit {self.data_dir}: "
                             f"{have}.")
        self.order = [*METHODS_3D, *seq_rows]
        self.chosen = [m for m in self.order if m in chosen]
        self.has_baselines = "slic3d" in self.chosen
        self.runs = _volume_runs(self.chosen, seq_keys, n_ch)
        self.runs_info: dict = {}
        self.n_levels: list = []
        self.points = [innermost_point(v.mask) for v in vols]
        self.examples: dict = {}
        for i in _example_indices(self.n):
            z = self.points[i][0]
            img = vols[i].image if vols[i].image.ndim == 3 else vols[i].image[..., 0]
            self.examples[vols[i].name] = {"z": z, "image": img[z], "gt": vols[i].mask[z],
                                           "masks": {}}

    def baseline_rows(self, i, seeds):
        yield ("slic3d", seeds, *slic3d_mask(self.vols[i], self.points[i]))

    def label(self, seed, run):
        channel = run[1]  # a sequence alone (the runs of _volume_runs), or None: all
        return f"seed {seed}" + ("" if channel is None else
                                 f", sequence {self.seq_names[channel]} alone")

    def case_text(self, i):
        return f"volume {i + 1}/{self.n} ({self.vols[i].name})"

    def _image(self, i: int, channel):
        v = self.vols[i]
        return v.image if channel is None else v.image[..., channel]

    def train(self, run, seed, budget, progress, cancel):
        from ..pipeline import train_volume_encoder

        run_key, channel, wanted_run = run
        enc = train_volume_encoder(
            [self._image(i, channel) for i in range(self.n)],
            spacing=[v.spacing for v in self.vols], seed=seed, progress=progress,
            cancel=cancel, **budget)
        self.runs_info[run_key] = _run_info(self.runs_info.get(run_key, {}), enc, seed,
                                            self.seq_names, channel, wanted_run)
        return enc

    def segment(self, run, enc, i, seed, cancel, timings, hier_dir):
        _, channel, wanted_run = run
        v = self.vols[i]
        for prefix, wanted in wanted_run.items():
            if not wanted:
                continue
            masks, res = variant_masks(
                enc, self._image(i, channel), v.mask, self.points[i], name=v.name, seed=seed,
                prefix=prefix, wanted=wanted, cancel=cancel, timings=timings,
                save_dir=hier_dir, spacing=v.spacing)
            if prefix == "cuts":
                self.n_levels.append(int(res.hierarchy.n_levels))
            yield masks

    def score(self, i, mask):
        v = self.vols[i]
        return score_3d(mask, v.mask, v.spacing), {
            "case": v.name, "gt_voxels": int(v.mask.sum()),
            "pred_voxels": int(np.count_nonzero(mask))}

    def keep(self, i, method, mask, metrics):
        ex = self.examples.get(self.vols[i].name)
        if ex is not None:
            ex["masks"][method] = (np.asarray(mask)[ex["z"]], metrics["dice"])

    def about_data(self):
        vs, seq_names = self.vs, self.seq_names
        return {
            "scoring": "3d",
            "units": {"hausdorff": "mm", "hd95": "mm"},
            "label_values": vs.label_values,
            "split": self.split,
            "cases": [v.name for v in self.vols],
            "sequences": ({"names": seq_names, "keys": self.seq_keys,
                           "source": vs.sequence_source} if seq_names else None),
            "runs": self.runs_info}

    def about_training(self, steps):
        return {"steps": steps}

    def levels(self):
        return {"n_levels": float(np.mean(self.n_levels)) if self.n_levels else None}

    def markdown(self, result):
        return R.markdown_3d(result)

    def draw_examples(self, path):
        R.figure_examples_3d(self.examples, path, order=self.order)


# --------------------------------------------------------------------------- the driver

class Scores:
    """Every scored mask of a run: the metric dicts by method and seed (``per``), the
    CSV rows, and the one-click rules seen; the first seed's masks go to the source's
    :meth:`Cases.keep` (the examples figure)."""

    def __init__(self, source: Cases, seeds: Sequence[int]):
        self.seeds = list(seeds)
        self.per: dict = {m: {s: [] for s in self.seeds} for m in source.chosen}
        self.rows: list = []
        self.click_rules: set = set()
        self.source = source

    def record(self, method: str, seed_list, i: int, mask, info: Optional[dict] = None):
        r, item = self.source.score(i, mask)
        info = info or {}
        if method.endswith("_click") and "setting" in info:
            self.click_rules.add(info["setting"])
        for s in seed_list:
            self.per[method][s].append(r)
            self.rows.append({"method": method, "seed": s, **item,
                              **{k: r[k] for k in METRIC_KEYS}, "empty_pred": int(r["empty_pred"]),
                              "level": info.get("level", ""),
                              "n_clusters": info.get("n_clusters", ""),
                              "setting": info.get("setting", "")})
        if seed_list[0] == self.seeds[0]:
            self.source.keep(i, method, mask, r)

    def summary(self, order: Sequence[str]) -> dict:
        return {m: R.summarise(self.per[m]) for m in order if m in self.per}

    def click_rule(self) -> Optional[str]:
        return ", ".join(sorted(self.click_rules)) or None


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


def _add_time(timings: dict, key: str, t0: float) -> None:
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


def _result(source: Cases, scores: Scores, *, t_start: float, seeds, data_dir,
            seconds, epochs, steps, device: str, timings: dict) -> dict:
    """The ``results.json`` content: the keys both layouts share, each layout's own
    (``about_*``) in their places."""
    trained = bool(source.runs)
    return R.clean({
        "methods": scores.summary(source.order),
        "seconds": round(time.perf_counter() - t_start, 2),
        "n_images": source.n,
        "seeds": seeds,
        "data": str(Path(data_dir)),
        "layout": source.layout,
        **source.about_data(),
        "click_rule": scores.click_rule(),
        "train_seconds": seconds if trained else None,
        "epochs": epochs if trained else None,
        **source.about_training(steps),
        "device": device,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "levels": source.levels(),
        **source.about_levels(),
        "notes": source.notes,
        "napari_cuts_version": __version__,
    })


def _write_outputs(out: Path, source: Cases, result: dict, scores: Scores) -> None:
    """The CSV, ``dice.png``, ``examples.png``, ``results.md`` and, last,
    ``results.json`` (each written atomically)."""
    from ..fileutil import write_json

    order = source.order
    R.write_csv(out / source.csv_name, source.fields, scores.rows)
    R.figure_dice(R.per_item_dice(scores.per, scores.seeds, order), out / "dice.png",
                  source.layout, order=order, **source.dice_figure)
    source.draw_examples(out / "examples.png")
    R.write_text(out / "results.md", source.markdown(result))
    write_json(out / "results.json", result)


def _evaluate(source: Cases, data_dir, out_dir, *, seeds, steps, seconds, epochs, init,
              device: str, progress: Progress, cancel: Cancel,
              save_hierarchies: bool) -> dict:
    """One evaluation of ``source``'s cases (see :func:`run_evaluation`)."""
    t_start = time.perf_counter()
    seeds = _check_seeds_seconds(seeds, seconds)
    source.load()
    out, hier_dir = _output_dir(out_dir, save_hierarchies)
    n, unit = source.n, source.unit
    total = (n if source.has_baselines else 0) + len(seeds) * len(source.runs) * 2 * n + 1
    done = 0
    timings: dict = {}
    scores = Scores(source, seeds)

    # Baselines: once, before any training.
    if source.has_baselines:
        t0 = time.perf_counter()
        for i in range(n):
            check_cancel(cancel)
            report(progress, done, total, f"{source.baseline_key}: {unit} {i + 1}/{n}")
            for m, seed_list, mask, info in source.baseline_rows(i, seeds):
                scores.record(m, seed_list, i, mask, info)
            done += 1
        timings[source.baseline_key] = time.perf_counter() - t0

    # CUTS: per seed, each run's encoder on all cases (n progress units), then every case.
    if source.runs:
        source.before_training(init)
        budget = dict(steps=steps, epochs=epochs, seconds=seconds, device=device,
                      warm_start=init)
        for seed in seeds:
            for run in source.runs:
                check_cancel(cancel)
                base = done
                label = source.label(seed, run)
                report(progress, done, total, f"{label}: {source.training_text}")
                t0 = time.perf_counter()
                enc = source.train(run, seed, budget,
                                   _training_progress(progress, base, n, total, seed), cancel)
                _add_time(timings, "train" if run[0] == "all" else f"train_{run[0]}", t0)
                done = base + n
                for i in range(n):
                    check_cancel(cancel)
                    report(progress, done, total, f"{label}: {source.case_text(i)}")
                    for masks in source.segment(run, enc, i, seed, cancel, timings, hier_dir):
                        t0 = time.perf_counter()
                        for m in source.order:
                            if m in masks:
                                scores.record(m, [seed], i, *masks[m])
                        _add_time(timings, "scoring", t0)
                    done += 1

    report(progress, done, total, "writing results")
    check_cancel(cancel)
    result = _result(source, scores, t_start=t_start, seeds=seeds, data_dir=data_dir,
                     seconds=seconds, epochs=epochs, steps=steps, device=device,
                     timings=timings)
    _write_outputs(out, source, result, scores)
    report(progress, total, total, "done")
    return result


# --------------------------------------------------------------------------- entry points

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
    source = Images(data_dir, methods=methods, ablation=ablation, limit=limit)
    return _evaluate(source, data_dir, out_dir, seeds=seeds, steps=steps, seconds=seconds,
                     epochs=epochs, init=init, device=device, progress=progress,
                     cancel=cancel, save_hierarchies=save_hierarchies)


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
    source = Volumes(data_dir, methods=methods, ablation=ablation, limit=limit,
                     labels=labels, split=split, cases=cases)
    return _evaluate(source, data_dir, out_dir, seeds=seeds, steps=steps, seconds=seconds,
                     epochs=epochs, init=init, device=device, progress=progress,
                     cancel=cancel, save_hierarchies=save_hierarchies)
