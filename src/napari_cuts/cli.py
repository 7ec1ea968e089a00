"""The ``napari-cuts`` command: segment, batch, evaluate, bench.

Errors the user can act on (:class:`~napari_cuts.errors.CutsError`) print one line
and exit with status 2; ``--debug`` shows the traceback. Long work shows a progress
bar on stderr (tqdm) driven by the same callbacks the napari widget uses.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import Cancelled, CutsError


class _Bar:
    """A tqdm progress bar fed by ``progress(done, total, message)`` callbacks."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stderr.isatty() or os.environ.get("NAPARI_CUTS_PROGRESS") == "1"
        self.bar = None
        self.stage = None
        self.last_print = 0.0

    def __call__(self, done: int, total: int, message: str) -> None:
        stage = message.split(":", 1)[0]
        if self.enabled:
            from tqdm import tqdm

            if self.bar is None or stage != self.stage or self.bar.total != total:
                self.close()
                self.bar = tqdm(total=total, desc=stage, unit="", leave=False,
                                dynamic_ncols=True, file=sys.stderr)
                self.stage = stage
            self.bar.n = min(done, total)
            self.bar.set_postfix_str(message[len(stage) + 1:].strip()[:60], refresh=False)
            self.bar.refresh()
        else:
            # Not a terminal (CI, logs): a line now and then, no carriage returns.
            now = time.monotonic()
            if stage != self.stage or now - self.last_print > 10 or done >= total:
                print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)
                self.stage, self.last_print = stage, now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="napari-cuts",
        description="Unsupervised multi-granular segmentation (CUTS) of medical images.",
    )
    p.add_argument("--version", action="version", version=f"napari-cuts {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="{segment,batch,evaluate,bench}")

    s = sub.add_parser("segment", help="train (or load) the encoder on an image and write its "
                       "coarse-to-fine hierarchy")
    s.add_argument("image", nargs="+", metavar="IMAGE",
                   help="PNG/JPEG/TIFF, NIfTI (.nii, .nii.gz), DICOM file or series folder; "
                        "several co-registered images on one grid (T1 T2 FLAIR ...) are one "
                        "input with one channel per sequence")
    sq = s.add_mutually_exclusive_group()
    sq.add_argument("--sequences", dest="sequences", action="store_const", const=True,
                    default=None, help="read a 4D NIfTI's volumes as sequences (channels of "
                    "one input), whatever its header says")
    sq.add_argument("--time-series", dest="sequences", action="store_const", const=False,
                    help="read a 4D NIfTI as a time series (its first volume), whatever its "
                    "header says")
    s.add_argument("--out", required=True, help="output folder")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--weights", help="encoder weights to load instead of training")
    g.add_argument("--steps", type=int, help="training budget in steps: at most N, ending "
                   "early once the loss has settled (default: a number that follows the "
                   "input's size, from the packaged warm-start weights; run.json records the "
                   "steps trained, and --steps with that number replays the run)")
    g.add_argument("--epochs", type=int, help="training epochs (from scratch)")
    g.add_argument("--seconds", type=float, help="training budget in seconds (from scratch; "
                   "the steps then depend on the machine's speed and load)")
    s.add_argument("--no-warm-start", dest="warm_start", action="store_const", const=False,
                   default=None, help="train from scratch (as in the paper), not from the "
                   "packaged warm-start weights")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    s.add_argument("--slices", type=int, nargs="+", help="for a volume: segment these slices "
                   "one by one, each with its own hierarchy (default: the volume as one object)")
    s.add_argument("--max-points", type=int, default=None,
                   help="condense larger images on a pooled grid of at most this many points "
                        "(default 262144 = 512 x 512 for 2D, 1200000 for a volume)")

    c = sub.add_parser("batch", help="a cohort on dask.distributed: one encoder, a hierarchy per "
                       "input, and optionally one reference click matched in every input")
    c.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and folders (a folder: "
                   "its supported image files, sorted; a DICOM series folder is one input)")
    c.add_argument("--out", required=True, help="output folder (OUT/<stem>/, OUT/summary.csv, "
                   "OUT/encoder.pt)")
    cg = c.add_mutually_exclusive_group()
    cg.add_argument("--weights", help="encoder weights to load instead of training")
    cg.add_argument("--steps", type=int, help="training budget in steps (default: a number "
                    "that follows the training sample's size, from the packaged weights)")
    cg.add_argument("--epochs", type=int, help="training epochs (from scratch)")
    cg.add_argument("--seconds", type=float, help="training budget in seconds (from scratch)")
    c.add_argument("--reference", metavar="IMAGE", help="the image clicked on (may be one of the "
                   "inputs); with --point")
    c.add_argument("--point", type=float, nargs="+", metavar="C", help="the click on the reference: "
                   "Y X (2D) or Z Y X (volume), array indices from 0")
    wg = c.add_mutually_exclusive_group()
    wg.add_argument("--scheduler", metavar="ADDRESS", help="an existing dask scheduler, e.g. "
                    "tcp://host:8786 (workers started with `dask worker ADDRESS`)")
    wg.add_argument("--workers", type=int, help="worker processes of the local cluster "
                    "(default: the CPU cores, at most one per input)")
    c.add_argument("--worker-timeout", type=float, default=60.0, metavar="S",
                   help="with no dask worker left (or none yet), wait this long for one, then "
                        "write summary.csv and stop (a rerun resumes; default 60)")
    c.add_argument("--seed", type=int, default=0)

    e = sub.add_parser("evaluate", help="score CUTS and the baselines on a labelled folder")
    e.add_argument("--data", required=True, help="folder like shared/data/retina, NIfTI "
                   "images with *_seg.nii.gz masks, or a Decathlon folder (imagesTr/, labelsTr/); "
                   "volumes are scored in 3D. Several sequences per case: case_<seq>.nii.gz "
                   "files (e.g. case_t1, case_flair) with case_seg.nii.gz, one channel each "
                   "(sorted by <seq>; a file belongs to the longest case name that has a "
                   "_seg mask, so case_t1.nii.gz with case_t1_seg.nii.gz is its own case), "
                   "or 4D images")
    e.add_argument("--out", required=True, help="output folder (results.json, results.md, figures)")
    e.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    e.add_argument("--steps", type=int, default=None, help="training budget per seed in steps "
                   "(default: the step rule of `segment`, from the packaged weights)")
    e.add_argument("--seconds", type=float, default=None, help="training budget per seed in "
                   "seconds (from scratch unless --warm-start)")
    e.add_argument("--epochs", type=int, default=None)
    e.add_argument("--warm-start", nargs="?", const=True, default=None, metavar="WEIGHTS",
                   help="2D images: start every seed's encoder from WEIGHTS (default: the "
                   "packaged warm-start weights) and fine-tune it for the budget")
    e.add_argument("--methods", nargs="+", default=None, help="a subset of the methods "
                   "(volumes of several sequences also take seq_<name>_best, seq_<name>_click)")
    e.add_argument("--limit", type=int, default=None, help="use only the first N images "
                   "(volumes: the first N cases after --split and --cases)")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    e.add_argument("--label", type=int, nargs="+", default=None, metavar="V",
                   help="volumes: the structure is the union of these label values "
                        "(default: every non-zero label)")
    e.add_argument("--ablation", action="store_true", help="also image_only_* (the same "
                   "pipeline without the encoder) and embedding_only_* (without the image "
                   "join) rows, for 2D images and volumes; on volumes of several sequences "
                   "also seq_<name>_best and seq_<name>_click for each sequence alone (its "
                   "own encoder, the same budget: one more training per sequence and seed; "
                   "<name> from the file suffix, the Decathlon dataset.json modality, or "
                   "the channel index 0, 1, ..)")
    e.add_argument("--split", choices=["all", "dev", "report"], default="all",
                   help="volumes: dev = the first half of the sorted case names, report = the "
                        "rest (choose settings on dev, report on report)")
    cg = e.add_mutually_exclusive_group()
    cg.add_argument("--cases", nargs="+", default=None, metavar="NAME",
                    help="volumes: only these cases (names without .nii.gz)")
    cg.add_argument("--cases-from", default=None, metavar="FILE",
                    help="volumes: only the cases listed in FILE, one a line")
    e.add_argument("--slices", action="store_true", help="score NIfTI volumes as 2D slices "
                   "(the largest-mask slice and its neighbours) instead of in 3D")
    e.add_argument("--save-hierarchies", action="store_true", help="volumes: also write "
                   "OUT/hierarchies/<case>_seed<S>.npz")
    e.add_argument("--clicks", type=int, nargs="?", const=10, default=None, metavar="N",
                   help="the simulated user instead of the usual evaluation: N clicks (10 when "
                        "bare) per case, Dice after each, for cuts_prompts, random_walker and "
                        "slic3d (image_only_prompts with --ablation); writes the clicks entry of "
                        "results.json (its methods kept), clicks.png and a results.md section. "
                        "--split also splits 2D folders (dev: the first half by sorted name). "
                        "Each case and seed is segmented as `segment` does (its training "
                        "defaults unless --seconds / --epochs) into OUT/cases/<case>/seed<S>/, "
                        "reused on a rerun")
    e.add_argument("--results-md", default=None, metavar="PATH", help="with --clicks: also "
                   "write the clicks table into PATH (e.g. benchmarks/RESULTS.md) between "
                   "<!-- evaluate-clicks:<data folder name> --> markers")

    b = sub.add_parser("bench", help="run the benchmark suite in benchmarks/")
    b.add_argument("which", nargs="?", default="all", help="a benchmark name (e.g. encoder, "
                   "condense, volume) or 'all'")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--quick", action="store_true", help="a small, fast version of each benchmark")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="the torch device, for the benchmarks that train or embed")
    b.add_argument("--benchmarks-dir", default=None, help="where the bench_*.py files are")
    b.add_argument("--results-md", default=None, metavar="PATH", help="also write each "
                   "benchmark's numbers into PATH (e.g. benchmarks/RESULTS.md) between "
                   "<!-- bench:<name> --> markers, with the command, commit and machine")
    return p


def _benchmarks_dir(given: str | None) -> Path:
    candidates = [Path(given)] if given else [
        Path.cwd() / "benchmarks",
        Path(__file__).resolve().parents[2] / "benchmarks",  # a source checkout
    ]
    for c in candidates:
        if c.is_dir() and any(c.glob("bench_*.py")):
            return c
    raise CutsError("benchmarks/ not found: run from a clone of the napari-cuts repository or "
                    "pass --benchmarks-dir.")


def _load_bench(path: Path):
    spec = importlib.util.spec_from_file_location(f"napari_cuts_bench_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(path.parent))
    return mod


def cmd_bench(args) -> int:
    bdir = _benchmarks_dir(args.benchmarks_dir)
    available = {p.stem[len("bench_"):].replace("_", "-"): p
                 for p in sorted(bdir.glob("bench_*.py"))}
    which = args.which.replace("_", "-")
    if which == "all":
        names = list(available)
    elif which in available:
        names = [which]
    else:
        raise CutsError(f"no benchmark named {args.which!r}; available: {', '.join(available)} or all.")
    results = {}
    for name in names:
        if not args.json:
            print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        run = _load_bench(available[name]).run
        kw = {"device": args.device} if "device" in inspect.signature(run).parameters else {}
        if args.device != "auto" and not kw:
            raise CutsError(f"bench {name} does not take --device.")
        results[name] = run(quick=args.quick, **kw)
        if not args.json:
            print(json.dumps(results[name], indent=2), flush=True)
            print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
        if args.results_md:
            _bench_section(Path(args.results_md), name, results[name], quick=args.quick)
    if args.json:
        print(json.dumps(results))
    return 0


def _bench_section(path: Path, name: str, result: dict, *, quick: bool) -> None:
    """Replace the ``<!-- bench:name -->`` section of ``path`` with ``result``."""
    import datetime

    from .evaluation.click_report import git_commit, machine, replace_section

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "napari-cuts bench " + name + (" --quick" if quick else "")
    body = (f"### bench {name}\n\nWritten by `{cmd}` on {when}.\n\n- commit: {git_commit()}\n"
            f"- machine: {machine()}\n\n```json\n{json.dumps(result, indent=1)}\n```\n")
    replace_section(path, f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->", body,
                    title="# Benchmark results\n")


def cmd_segment(args) -> int:
    from .pipeline import segment

    bar = _Bar()
    try:
        image = args.image[0] if len(args.image) == 1 else list(args.image)
        summary = segment(image, args.out, weights=args.weights, epochs=args.epochs,
                              steps=args.steps, seconds=args.seconds, seed=args.seed, device=args.device,
                              max_points=args.max_points, slices=args.slices,
                              progress=bar, log=lambda m: print(m, file=sys.stderr),
                              sequences=args.sequences, warm_start=args.warm_start)
    finally:
        bar.close()
    out = Path(args.out)
    levels = summary.get("n_clusters")
    print(f"wrote {out / 'hierarchy.npz' if levels is not None else out / 'slices'} "
          f"and {out / 'levels.png'} in {summary['seconds_total']:.1f} s"
          + (f" ({len(levels)} levels, {levels[0]} to {levels[-1]} clusters)" if levels else ""))
    return 0


def cmd_batch(args) -> int:
    from .cohort import run_batch

    bar = _Bar()
    try:
        res = run_batch(args.inputs, args.out, weights=args.weights, epochs=args.epochs,
                        steps=args.steps, seconds=args.seconds, reference=args.reference, point=args.point,
                        scheduler=args.scheduler, workers=args.workers, seed=args.seed,
                        worker_timeout=args.worker_timeout, progress=bar,
                        log=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        bar.close()
    out = Path(args.out)
    n = len(res["rows"])
    print(f"wrote {out / 'summary.csv'}: {res['computed']} computed, {res['skipped']} already "
          f"complete, {res['failed']} failed of {n} inputs in {res['seconds_total']:.1f} s")
    if res["failed"]:
        print(f"napari-cuts: error: {res['failed']} of {n} inputs failed; their errors are in "
              f"{out / 'summary.csv'}.", file=sys.stderr)
        return 1
    return 0


def _cmd_evaluate_clicks(args) -> int:
    import shlex

    from .evaluation import run_clicks_evaluation

    if args.slices or args.save_hierarchies:
        raise CutsError("--clicks scores whole images and volumes; drop --slices and "
                        "--save-hierarchies.")
    cases = args.cases
    if args.cases_from is not None:
        from .evaluation import read_case_list

        cases = read_case_list(args.cases_from)
    bar = _Bar()
    try:
        run_clicks_evaluation(args.data, args.out, n_clicks=args.clicks, seeds=tuple(args.seeds),
                              steps=args.steps, seconds=args.seconds, epochs=args.epochs, split=args.split,
                              cases=cases, labels=args.label, limit=args.limit,
                              ablation=args.ablation, methods=args.methods, progress=bar,
                              results_md=args.results_md, device=args.device,
                              warm_start=args.warm_start,
                              command=shlex.join(["napari-cuts", *getattr(args, "argv", [])]))
    finally:
        bar.close()
    print((Path(args.out) / "results.md").read_text())
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import run_evaluation

    if args.clicks is not None:
        return _cmd_evaluate_clicks(args)

    bar = _Bar()
    try:
        cases = args.cases
        if args.cases_from is not None:
            from .evaluation import read_case_list

            cases = read_case_list(args.cases_from)
        res = run_evaluation(args.data, args.out, seeds=tuple(args.seeds), steps=args.steps, seconds=args.seconds,
                             epochs=args.epochs, methods=args.methods, limit=args.limit,
                             device=args.device, progress=bar, labels=args.label,
                             ablation=args.ablation, split=args.split, cases=cases,
                             volumes="slices" if args.slices else "3d",
                             save_hierarchies=args.save_hierarchies, init=args.warm_start)
    finally:
        bar.close()
    out = Path(args.out)
    print((out / "results.md").read_text() if (out / "results.md").exists() else json.dumps(res))
    return 0


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler = {"segment": cmd_segment, "batch": cmd_batch, "evaluate": cmd_evaluate,
               "bench": cmd_bench}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("napari-cuts: interrupted; no partial outputs were left behind.", file=sys.stderr)
        return 130
    except Cancelled as exc:
        print(f"napari-cuts: {exc}", file=sys.stderr)
        return 130
    except CutsError as exc:
        if args.debug:
            raise
        print(f"napari-cuts: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        if args.debug:
            raise
        print("napari-cuts: error: out of memory; use a smaller --max-points or crop the image.",
              file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: say so in one line, keep the traceback for --debug
        if args.debug:
            raise
        print(f"napari-cuts: internal error ({type(exc).__name__}: {exc}); rerun with --debug "
              "and report it with the traceback.", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
