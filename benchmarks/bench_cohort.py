"""Benchmark of ``napari-cuts batch``: a cohort on dask.distributed, 1 vs 2 workers.

``run(quick=False) -> dict``::

    {"inputs", "shape", "train_seconds",
     "workers": {"1": {"seconds_tasks", "seconds_total", "images_per_second"}, "2": {...}},
     "speedup_2_vs_1", "identical_1_vs_2",
     "faults": {name: {"cluster", "signal", "moment", "killed_after_seconds",
                       "inputs_done_at_kill", "seconds_total", "recomputed", "batch_recovery",
                       "failed", "identical_to_clean", "rerun_computed", "rerun_skipped",
                       "rerun_seconds"}},
     "targets": {"speedup_ge_1.7", "identical", "faults_change_nothing",
                 "rerun_recomputes_nothing"}}

What it does: 8 inputs of 256 x 256 made from ``sample_data/fundus.png`` (crops at
several offsets and scales, some mirrored), ONE encoder trained on them once for 10 s
(``quick``: 4 inputs, 5 s), a reference click at the centre of the first input; then the
same batch (:func:`napari_cuts.cohort.run_batch`) on a LocalCluster of 1 and of 2
single-threaded worker processes, each started and warmed up (imports) before the
clock starts: ``seconds_tasks`` is from the first submitted input to the last result,
``images_per_second`` = inputs / ``seconds_tasks``. ``identical_1_vs_2``: the per-input
hierarchies, persistent maps and masks are equal.

``faults`` (:data:`FAULTS`; ``quick``: the first only): the 2-worker batch again, each
time with one worker killed at a moment a task signals (the marker files of
:data:`napari_cuts.cohort.TEST_MARKER_ENV`): real ``dask scheduler`` and ``dask worker``
processes (:class:`DaskProcesses`, the worker's process group killed with SIGKILL or
SIGTERM) as the reference task starts or mid-way through the inputs, and a LocalCluster
worker killed mid-way. Reported: when (``killed_after_seconds`` after the batch started,
``inputs_done_at_kill``), what was computed again (``recomputed``: how many times each
task that started more than once started, by their markers: ``encoder`` (its bytes),
``reference``, input stems; ``batch_recovery``: what the batch itself submitted again,
beside what the scheduler reran on its own), the wall time
(``seconds_total``, against ``workers["2"]["seconds_total"]`` without a fault), whether
the outputs equal the 1-worker run's, and a rerun (``rerun_computed`` must be 0; it is
given a scheduler address where nobody listens, so it cannot use a cluster).

``python benchmarks/bench_cohort.py --retina [--seconds 60] [--reference ID]``: the
one-click-for-all measure of issue 12 on ``../shared/data/retina`` (40 images with GA
masks): the batch with 2 workers and a reference click at the innermost point of one
image's mask (``selection.innermost_point``; default: the first image id) gives a mask
for the other 39; their mean Dice against the expert masks, beside the per-image one
click (``Hierarchy.click_mask`` at each image's own innermost point, on the same
hierarchies).

``python benchmarks/bench_cohort.py --decathlon DIR [--reference CASE] [--label V ...]
[--seconds 60] [--weights FILE]``: the same measure on a Decathlon folder of volumes
(``imagesTr/``, ``labelsTr/``; e.g. ``../shared/data/msd_hippocampus``), scored in 3D:
the structure is the union of the ``--label`` values (default every non-zero label), the
reference click at its innermost voxel in the reference case (default the first),
Dice of every other case's matched mask beside that case's own one click.
``--weights``: reuse a cohort encoder (an A/B of matching rules on one encoder).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FUNDUS = REPO / "sample_data" / "fundus.png"


def _inputs(folder: Path, n: int, size: int = 256) -> list[Path]:
    import imageio.v3 as iio
    from skimage.transform import resize

    im = iio.imread(FUNDUS)[..., :3]
    h, w = im.shape[:2]
    paths = []
    for k in range(n):
        side = int(min(h, w) * (1.0 - 0.08 * (k % 4)))
        y0 = (k * 37) % (h - side + 1)
        x0 = (k * 53) % (w - side + 1)
        crop = im[y0:y0 + side, x0:x0 + side]
        if k % 2:
            crop = crop[:, ::-1]
        small = resize(crop, (size, size), anti_aliasing=True, preserve_range=True)
        p = folder / f"fundus{k:02d}.png"
        iio.imwrite(p, np.clip(small.round(), 0, 255).astype(np.uint8))
        paths.append(p)
    return paths


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaskProcesses:
    """A real ``dask scheduler`` and ``dask worker`` processes on this machine, as a
    cluster user starts them: free ports, one thread per worker, each command in its
    own process group (killed as a group, like a node or a ``kill`` of the job), their
    output in ``folder``. ``env`` is added to the workers' environment (e.g.
    :data:`napari_cuts.cohort.TEST_MARKER_ENV`). :meth:`stop` ends all of them."""

    def __init__(self, folder: Path, env: dict | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.env = dict(env or {})
        self.scheduler = None
        self.workers: list = []
        self.address = None

    def _popen(self, args, name: str, env=None):
        import subprocess

        log = open(self.folder / f"{name}.log", "wb")
        try:
            return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=self.folder,
                                    env=dict(os.environ, **(env or {})))
        finally:
            log.close()

    def start_scheduler(self, timeout: float = 60.0) -> str:
        import socket

        port = free_port()
        self.scheduler = self._popen(["scheduler", "--host", "127.0.0.1", "--port", str(port),
                                      "--no-dashboard"], "scheduler")
        self.address = f"tcp://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            if self.scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited: {self.log('scheduler')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return self.address
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dask scheduler not listening after {timeout} s")
                time.sleep(0.05)

    def start_workers(self, n: int, wait: float = 90.0) -> None:
        """``n`` more ``dask worker`` processes, returned once the scheduler has them all."""
        from distributed import Client

        for _ in range(n):
            k = len(self.workers)
            self.workers.append(self._popen(
                ["worker", self.address, "--nthreads", "1", "--nworkers", "1", "--host",
                 "127.0.0.1", "--no-dashboard", "--name", f"w{k}", "--local-directory",
                 str(self.folder / f"w{k}"), "--death-timeout", "60"], f"worker{k}",
                env=self.env))
        with Client(self.address, set_as_default=False, timeout="20s") as c:
            c.wait_for_workers(sum(w.poll() is None for w in self.workers), timeout=wait)

    def log(self, name: str) -> str:
        try:
            return (self.folder / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def kill_worker_of(self, pid: int, sig: int) -> int:
        """Kill the process group of the ``dask worker`` whose worker process is ``pid``
        (its nanny and the worker with it); returns the command's pid."""
        pgid = os.getpgid(pid)
        for w in self.workers:
            if w.pid == pgid:
                os.killpg(pgid, sig)
                return w.pid
        raise RuntimeError(f"process {pid} is not one of this cluster's workers")

    def stop_workers(self) -> None:
        for w in self.workers:
            _end_group(w)
        self.workers = []

    def stop(self) -> None:
        self.stop_workers()
        if self.scheduler is not None:
            _end_group(self.scheduler)
            self.scheduler = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _end_group(proc, grace: float = 10.0) -> None:
    """SIGTERM to a process group started here, SIGKILL when it has not ended in time."""
    import subprocess

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    if sig == signal.SIGTERM:    # the group's other processes (a worker under its nanny)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _cluster(n: int):
    from distributed import Client, LocalCluster

    lc = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(lc, set_as_default=False)
    client.wait_for_workers(n, timeout=120)

    def warm():
        import torch  # noqa: F401

        import napari_cuts.cohort  # noqa: F401
        import napari_cuts.condensation  # noqa: F401
        import napari_cuts.pipeline  # noqa: F401
        return os.getpid()

    client.run(warm)
    return lc, client


def _same(a: Path, b: Path, stems) -> bool:
    for s in stems:
        try:
            ha, hb = np.load(a / s / "hierarchy.npz"), np.load(b / s / "hierarchy.npz")
            if not all(np.array_equal(ha[k], hb[k]) for k in ("labels", "finest", "luts")):
                return False
            for name in ("persistent.png", "mask.png"):
                if (a / s / name).exists() != (b / s / name).exists():
                    return False
                if (a / s / name).exists() and (a / s / name).read_bytes() != (b / s / name).read_bytes():
                    return False
        except OSError:
            return False
    return True


def run(quick: bool = False) -> dict:
    from napari_cuts.cohort import run_batch
    from napari_cuts.pipeline import get_encoder

    n = 4 if quick else 8
    train_s = 5.0 if quick else 10.0
    R: dict = {"inputs": n, "shape": [256, 256, 3], "train_seconds": train_s, "workers": {},
               "cpu_count": os.cpu_count(), "load_average_before": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="napari_cuts_bench_cohort_") as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        paths = _inputs(tmp / "in", n)
        import imageio.v3 as iio

        enc, _ = get_encoder([iio.imread(p) for p in paths], seconds=train_s, seed=0)
        enc.save(tmp / "encoder.pt")
        kw = dict(weights=tmp / "encoder.pt", reference=paths[0], point=(128, 128), seed=0)
        stems = [p.stem for p in paths]
        for w in (1, 2):
            lc, client = _cluster(w)
            try:
                res = run_batch(paths, tmp / f"out{w}", client=client, **kw)
            finally:
                client.close()
                lc.close()
            R["workers"][str(w)] = {"seconds_tasks": res["seconds_tasks"],
                                    "task_seconds_sum": round(sum(float(r["seconds"] or 0)
                                                                  for r in res["rows"]), 3),
                                    "load_average_after": round(os.getloadavg()[0], 2),
                                    "seconds_total": res["seconds_total"],
                                    "images_per_second": round(n / res["seconds_tasks"], 3),
                                    "failed": res["failed"]}
        R["speedup_2_vs_1"] = round(R["workers"]["2"]["images_per_second"]
                                    / R["workers"]["1"]["images_per_second"], 3)
        R["identical_1_vs_2"] = _same(tmp / "out1", tmp / "out2", stems)
        R["faults"] = {}
        for name, where, sig, moment in FAULTS[:1] if quick else FAULTS:
            R["faults"][name] = _fault_run(paths, tmp, kw, stems, where, sig, moment)
    t = {"speedup_ge_1.7": R["speedup_2_vs_1"] >= 1.7, "identical": R["identical_1_vs_2"]}
    if R["faults"]:
        f = R["faults"].values()
        t["faults_change_nothing"] = all(x["identical_to_clean"] and x["failed"] == 0
                                         and x.get("error") is None for x in f)
        t["rerun_recomputes_nothing"] = all(x["rerun_computed"] == 0 for x in f)
    R["targets"] = t
    R["quick"] = bool(quick)
    return R


#: The fault runs: (name, cluster, signal, moment). The cluster is real ``dask
#: scheduler`` / ``dask worker`` processes (:class:`DaskProcesses`; the worker's process
#: group is killed) or a LocalCluster (the worker process is killed; its nanny starts
#: another). The moment: as the reference task starts, or as the input in the middle of
#: the list starts once at least one input is finished.
FAULTS = (
    ("dask_sigkill_at_reference", "processes", signal.SIGKILL, "reference"),
    ("dask_sigterm_at_reference", "processes", signal.SIGTERM, "reference"),
    ("dask_sigkill_midway", "processes", signal.SIGKILL, "midway"),
    ("dask_sigterm_midway", "processes", signal.SIGTERM, "midway"),
    ("local_sigkill_midway", "local", signal.SIGKILL, "midway"),
)


class KillAt(threading.Thread):
    """Kill a worker at a moment a task signals (:data:`napari_cuts.cohort.TEST_MARKER_ENV`):
    holds the first task that reaches ``phase`` (``reference``, an input's stem, or
    ``<stem>.write``); as soon as its marker is in ``markers`` and at least
    ``after_done`` of ``stems`` are finished in ``out``, calls ``kill(pid)`` with the
    pid of the task's worker process, then releases the phase. No sleeping for a
    result: it polls for files, with a deadline of ``wait`` seconds."""

    def __init__(self, markers: Path, phase: str, kill, out: Path, stems=(),
                 after_done: int = 0, wait: float = 600.0):
        super().__init__(daemon=True)
        self.markers, self.phase, self.kill, self.out = Path(markers), phase, kill, Path(out)
        self.stems, self.after_done, self.wait = list(stems), after_done, wait
        self.pid = self.done_at_kill = self.error = None
        self.at = None               #: time.perf_counter() at the kill
        (self.markers / f"hold-{phase}").touch()
        self.start()

    def finished(self) -> int:
        return sum((self.out / s / "done.json").exists() for s in self.stems)

    def run(self):
        deadline = time.monotonic() + self.wait
        try:
            while time.monotonic() < deadline:
                found = sorted(self.markers.glob(f"{self.phase}@*.started"))
                if found and self.finished() >= self.after_done:
                    self.pid = int(found[0].name.split("@")[1])
                    self.done_at_kill = self.finished()
                    self.at = time.perf_counter()
                    self.kill(self.pid)
                    return
                time.sleep(0.02)     # polling for a marker file
            self.error = f"no {self.phase} marker within {self.wait} s"
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            self.error = repr(exc)
        finally:
            (self.markers / f"release-{self.phase}").touch()

    def check(self, timeout: float = 60.0) -> None:
        self.join(timeout)
        if self.error is not None or self.pid is None:
            raise AssertionError(self.error or "the worker was not killed")


def started_twice(markers: Path) -> dict:
    """Phases started more than once (recomputed), from the marker files: {phase: times}."""
    count: dict = {}
    for f in Path(markers).glob("*@*.started"):
        phase = f.name.split("@")[0]
        count[phase] = count.get(phase, 0) + 1
    return {k: v for k, v in sorted(count.items()) if v > 1}


def _warm():
    import torch  # noqa: F401

    import napari_cuts.cohort  # noqa: F401
    import napari_cuts.condensation  # noqa: F401
    import napari_cuts.pipeline  # noqa: F401
    return os.getpid()


def _fault_run(paths, tmp: Path, kw: dict, stems, where: str, sig, moment: str) -> dict:
    """The 2-worker batch with one worker killed with ``sig`` at ``moment``; then its
    outputs against the clean 1-worker run, and a rerun."""
    from distributed import Client

    from napari_cuts.cohort import TEST_MARKER_ENV, run_batch

    name = f"{where}-{signal.Signals(sig).name}-{moment}"
    out = tmp / f"out_{name}"
    markers = tmp / f"markers_{name}"
    markers.mkdir()
    phase = "reference" if moment == "reference" else stems[len(stems) // 2]
    R = {"cluster": "dask scheduler + 2 dask worker processes" if where == "processes" else
         "LocalCluster of 2 worker processes", "signal": signal.Signals(sig).name,
         "moment": "as the reference task starts" if moment == "reference" else
         f"as {phase} starts, once >= 1 input is finished"}
    procs = lc = client = None
    old_env = os.environ.get(TEST_MARKER_ENV)
    try:
        if where == "processes":
            procs = DaskProcesses(tmp / f"dask_{name}", env={TEST_MARKER_ENV: str(markers)})
            procs.start_scheduler()
            procs.start_workers(2)
            client = Client(procs.address, set_as_default=False)
            client.run(_warm)
            kill = (lambda pid: procs.kill_worker_of(pid, sig))
            batch_kw = dict(scheduler=procs.address)
        else:
            os.environ[TEST_MARKER_ENV] = str(markers)      # the workers inherit it
            lc, client = _cluster(2)
            kill = (lambda pid: os.kill(pid, sig))
            batch_kw = dict(client=client)
        killer = KillAt(markers, phase, kill, out, stems,
                        after_done=0 if moment == "reference" else 1)
        t0 = time.perf_counter()
        res = run_batch(paths, out, **kw, **batch_kw)
        R["seconds_total"] = round(time.perf_counter() - t0, 2)
        killer.check()
        R.update(killed_pid=killer.pid, killed_after_seconds=round(killer.at - t0, 2),
                 inputs_done_at_kill=killer.done_at_kill, failed=res["failed"],
                 computed=res["computed"], recomputed=started_twice(markers),
                 batch_recovery=res.get("recovered"),
                 identical_to_clean=_same(tmp / "out1", out, stems))
    except Exception as exc:  # noqa: BLE001 - a fault run that fails is a result to report
        R.update(error=f"{type(exc).__name__}: {exc}", failed=len(stems), identical_to_clean=False)
    finally:
        if client is not None:
            client.close()
        if lc is not None:
            lc.close()
        if procs is not None:
            procs.stop()
        if old_env is None:
            os.environ.pop(TEST_MARKER_ENV, None)
        else:
            os.environ[TEST_MARKER_ENV] = old_env
    t0 = time.perf_counter()
    try:            # a complete folder needs no cluster: the scheduler named is nobody
        rerun = run_batch(paths, out, **kw, scheduler=f"tcp://127.0.0.1:{free_port()}")
        R.update(rerun_computed=rerun["computed"], rerun_skipped=rerun["skipped"],
                 rerun_seconds=round(time.perf_counter() - t0, 2))
    except Exception as exc:  # noqa: BLE001
        R.update(rerun_computed=None, rerun_error=f"{type(exc).__name__}: {exc}")
    return R


# ------------------------------------------------------------------ retina

def _one_click_for_all(inputs, names, gts, ref, ref_path, mask_file, read_mask, *,
                       workers: int, out=None, prefix: str, **batch_kw) -> dict:
    """Run the batch with the reference click at the innermost point of ``gts[ref]`` and
    score every input: the matched mask (``out/<name>/<mask_file>``, read by
    ``read_mask``) and the input's own one click on its hierarchy, against ``gts``."""
    from napari_cuts.cohort import run_batch
    from napari_cuts.hierarchy import Hierarchy
    from napari_cuts.metrics import dice
    from napari_cuts.selection import innermost_point

    ref_pt = innermost_point(gts[ref])
    tmpd = None
    if out is None:
        tmpd = tempfile.TemporaryDirectory(prefix=prefix)
        out = tmpd.name
    out = Path(out)
    t0 = time.perf_counter()
    res = run_batch(inputs, out, reference=ref_path, point=ref_pt, workers=workers, seed=0,
                    log=lambda m: print(m, file=sys.stderr), **batch_kw)
    wall = time.perf_counter() - t0
    per = {}
    for name in names:
        gt = gts[name]
        h = Hierarchy.load(out / name / "hierarchy.npz")
        per[name] = {"matched": round(float(dice(read_mask(out / name / mask_file), gt)), 4),
                     "own_click": round(float(dice(h.click_mask(innermost_point(gt)), gt)), 4)}
    others = [n for n in names if n != ref]
    R = {"point": list(ref_pt), "workers": workers, "n_images": len(names),
         "one_click_for_all_mean_dice": round(float(np.mean([per[n]["matched"] for n in others])), 4),
         "one_click_for_all_median_dice": round(float(np.median([per[n]["matched"] for n in others])), 4),
         "n_matched": len(others),
         "per_image_one_click_mean_dice": round(float(np.mean([v["own_click"] for v in per.values()])), 4),
         "per_image_one_click_mean_dice_others": round(float(np.mean(
             [per[n]["own_click"] for n in others])), 4),
         "reference_self_match_dice": per[ref]["matched"],
         "reference_structure": res.get("reference") and {k: res["reference"][k] for k in
                                               ("level", "n_clusters", "mask_pixels",
                                                "area_fraction")},
         "failed": res["failed"], "seconds_total": round(wall, 1),
         "seconds_tasks": res["seconds_tasks"], "per_image": per}
    if tmpd is not None:
        tmpd.cleanup()
    return R


def retina(data=None, seconds: float = 60.0, reference=None, workers: int = 2,
           out=None) -> dict:
    """The one-click-for-all measure (module doc)."""
    import imageio.v3 as iio

    root = Path(data) if data else Path(os.environ.get("NAPARI_CUTS_DATA", REPO.parent / "shared" / "data")) / "retina"
    imgs = sorted((root / "image_with_GA").glob("image*.png"),
                  key=lambda p: int(p.stem[len("image"):]))
    if not imgs:
        return {"error": f"no retina images under {root}"}
    ids = [p.stem[len("image"):] for p in imgs]
    gts = {f"image{i}": np.load(root / "label_with_GA" / f"label{i}.npy") > 0 for i in ids}
    ref_id = str(reference) if reference is not None else ids[0]
    R = _one_click_for_all(imgs, [f"image{i}" for i in ids], gts, f"image{ref_id}",
                           root / "image_with_GA" / f"image{ref_id}.png", "mask.png",
                           lambda f: iio.imread(f) > 0, workers=workers, out=out,
                           prefix="napari_cuts_retina_cohort_", seconds=seconds)
    R["per_image"] = {k[len("image"):]: v for k, v in R["per_image"].items()}
    R.update(train_seconds=seconds, reference_image=f"image{ref_id}")
    R["targets"] = {"one_click_for_all_ge_0.55": R["one_click_for_all_mean_dice"] >= 0.55}
    return R


def decathlon(data, seconds: float = 60.0, reference=None, labels=None, workers: int = 2,
              weights=None, out=None) -> dict:
    """The one-click-for-all measure on a Decathlon folder of volumes (module doc)."""
    from napari_cuts.evaluation import structure_mask
    from napari_cuts.io import read_image

    root = Path(data)
    imgs = [p for p in sorted((root / "imagesTr").glob("*.nii.gz")) if not p.name.startswith(".")]
    if not imgs:
        return {"error": f"no volumes under {root / 'imagesTr'}"}
    stems = [p.name[: -len(".nii.gz")] for p in imgs]
    gts = {s: structure_mask(np.asarray(read_image(root / "labelsTr" / f"{s}.nii.gz").data),
                             labels) for s in stems}
    ref = str(reference) if reference is not None else stems[0]
    kw = {"weights": weights} if weights else {"seconds": seconds}
    R = _one_click_for_all(imgs, stems, gts, ref, root / "imagesTr" / f"{ref}.nii.gz",
                           "mask.nii.gz", lambda f: np.asarray(read_image(f).data) > 0,
                           workers=workers, out=out, prefix="napari_cuts_decathlon_cohort_", **kw)
    R.update(data=str(root), reference_case=ref, labels=labels,
             train_seconds=None if weights else seconds,
             weights=str(weights) if weights else None)
    return R


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--decathlon" in args:
        kw = {}
        for flag, key, conv in (("--seconds", "seconds", float), ("--reference", "reference", str),
                                ("--weights", "weights", str), ("--out", "out", str)):
            if flag in args:
                kw[key] = conv(args[args.index(flag) + 1])
        if "--label" in args:
            i = args.index("--label") + 1
            vals = []
            while i < len(args) and not args[i].startswith("--"):
                vals.append(float(args[i]))
                i += 1
            kw["labels"] = vals
        print(json.dumps(decathlon(args[args.index("--decathlon") + 1], **kw), indent=2))
        sys.exit(0)
    if "--retina" in args:
        kw = {}
        if "--seconds" in args:
            kw["seconds"] = float(args[args.index("--seconds") + 1])
        if "--reference" in args:
            kw["reference"] = args[args.index("--reference") + 1]
        if "--out" in args:
            kw["out"] = args[args.index("--out") + 1]
        if "--data" in args:
            kw["data"] = args[args.index("--data") + 1]
        print(json.dumps(retina(**kw), indent=2))
    else:
        print(json.dumps(run(quick="--quick" in args), indent=2))
