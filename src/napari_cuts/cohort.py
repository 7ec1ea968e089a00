"""A cohort on dask.distributed: ``napari-cuts batch``, and one click matched in every image.

One encoder for the cohort (trained in the client process on a sample of the inputs, or
loaded with ``weights``) goes to the workers ONCE, as the result of one task
(:func:`encoder_blob`, the file's bytes) that every other task depends on; each task
gets a path and writes its input's outputs itself, so no pixel array travels. Per input
``OUT/<stem>/``:

* ``hierarchy.npz`` (:meth:`~napari_cuts.hierarchy.Hierarchy.save`);
* the persistent map: ``persistent.png`` (pictures) or ``persistent.nii.gz`` (NIfTI and
  DICOM input, source geometry);
* with a reference click, ``mask.png`` / ``mask.nii.gz``: the structure matching it;
* ``done.json``: what was computed from what (input size and time, encoder SHA-256,
  seed, reference), the files and their sizes, the summary row.

A task writes everything into ``OUT/.partial-<stem>-<random>/`` and publishes the folder
with one ``os.replace``: ``OUT/<stem>/`` either holds a finished input or does not
exist, whatever kills the worker or the client. A rerun skips every input whose
``done.json`` matches the current settings and whose files are all there (nothing is
recomputed or rewritten) and removes leftover ``.partial-*`` folders. A failed input
is a row with status ``error`` in ``OUT/summary.csv``; the others go on.

A worker may die at any moment (SIGKILL, SIGTERM, a lost node). The encoder's bytes are
a task, not scattered data, so the scheduler makes them again on another worker when
the ones holding them die; the reference task and the per-input tasks that the
scheduler gives up on or cancels are submitted again (:data:`REFERENCE_ATTEMPTS`,
:data:`INPUT_ATTEMPTS`); an input published before its worker died is taken from its
folder, never recomputed. With no worker left the batch waits ``worker_timeout``
seconds (``--worker-timeout``) for one, then writes ``summary.csv`` (the unfinished
inputs ``pending``) and raises :class:`NoWorkers` naming the scheduler; a lost
scheduler likewise (:class:`ClusterLost`). A rerun resumes.

The matching of the reference structure in every input is :mod:`napari_cuts.matching`
(shared with the widget), the discovery of the inputs and ``summary.csv``
:mod:`napari_cuts.cohort_files`, the worker tasks :mod:`napari_cuts.batch_tasks`; this
module is the client: the dask connection, the submissions and resubmissions, the
summary. Per input the work is deterministic (seeded, one torch thread per task), so
1 worker and 2 workers give the same results.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

from .batch_tasks import (
    DONE_VERSION, PARTIAL_PREFIX, TEST_MARKER_ENV, encoder_blob, is_done, process_input,
    reference_task,
)
from .cohort_files import (
    CSV_COLUMNS, MAX_TRAIN_IMAGES, CohortInput, empty_row, expand_inputs, input_signature,
    one_line, training_sample, write_summary,
)
from .cohort_files import sha256_file as _sha256_file
from .errors import CutsError, InputError
from .images import Progress
from .matching import (
    MATCH_BALANCE_IMAGE, MATCH_LOOKALIKE, MATCH_POSITION, MATCH_SIMILAR, MAX_MATCH_AREA,
    MIN_MATCH_AREA, appearance_similarity, check_reference_point, extent_level, image_columns,
    match_folder, match_image, match_space, match_structure, matched_mask, prototype_at,
    prototype_of_mask, standardised, structure_means,
)

# The batch's own names, and (for the code that imports them from here) those of the
# modules it is made of.
__all__ = ["run_batch", "ClusterLost", "NoWorkers", "WORKER_TIMEOUT",
           # cohort_files
           "CSV_COLUMNS", "MAX_TRAIN_IMAGES", "CohortInput", "expand_inputs", "input_signature",
           # batch_tasks
           "is_done", "DONE_VERSION", "TEST_MARKER_ENV",
           # matching
           "check_reference_point", "structure_means", "standardised", "image_columns",
           "match_space", "appearance_similarity", "prototype_at", "prototype_of_mask",
           "match_structure", "extent_level", "matched_mask", "match_image", "match_folder",
           "MIN_MATCH_AREA", "MAX_MATCH_AREA", "MATCH_SIMILAR", "MATCH_POSITION",
           "MATCH_LOOKALIKE", "MATCH_BALANCE_IMAGE"]

SCHEDULER_TIMEOUT = "5s"
#: With no worker at the scheduler (none yet, or every one lost), the batch waits this
#: long for one (``--worker-timeout``), then writes ``summary.csv`` and stops.
WORKER_TIMEOUT = 60.0
#: A task lost with its worker (killed, or cancelled with data that died) is submitted
#: again this many times in all; the scheduler itself already reruns a task whose
#: worker dies up to ``distributed.scheduler.allowed-failures`` times first.
INPUT_ATTEMPTS = 3
REFERENCE_ATTEMPTS = 4
#: Seconds to fetch a finished task's (small) result before counting it as lost.
RESULT_TIMEOUT = 120.0

Log = Optional[Callable[[str], None]]


def _clean_partials(out: Path) -> None:
    for p in out.glob(f"{PARTIAL_PREFIX}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


class ClusterLost(CutsError):
    """The batch cannot go on: the dask scheduler is gone, or has had no worker for the
    whole ``--worker-timeout`` (:class:`NoWorkers`). Finished inputs are kept; a rerun
    resumes."""


class NoWorkers(ClusterLost):
    """No dask worker at the scheduler for the whole ``--worker-timeout``."""


class _Watchdog:
    """Counts the scheduler's workers (at most once a second) while the batch waits on
    tasks; :class:`NoWorkers` once there has been none for ``timeout`` seconds, a
    :class:`CutsError` naming the scheduler when the scheduler cannot be reached."""

    def __init__(self, client, address: str, timeout: float, log):
        self.client, self.address, self.timeout, self.log = client, address, float(timeout), log
        self.last = -math.inf
        self.since: Optional[float] = None
        self.lost_workers = 0
        self.n = None

    def check(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 1.0:
            return
        self.last = now
        try:
            n = len(self.client.nthreads())
        except Exception as exc:  # noqa: BLE001 - the scheduler is gone or unreachable
            raise ClusterLost(f"lost the dask scheduler at {self.address} "
                              f"({one_line(exc, 160)})") from None
        if self.n is not None and n < self.n:
            self.lost_workers += self.n - n
            self.log(f"{self.n - n} dask worker(s) lost at {self.address}; {n} left")
        self.n = n
        if n:
            if self.since is not None:
                self.log(f"{n} dask worker(s) at {self.address} again; going on")
            self.since = None
            return
        if self.since is None:
            self.since = now
            self.log(f"no dask worker left at {self.address}; waiting up to "
                     f"{self.timeout:g} s for one ...")
        elif now - self.since >= self.timeout:
            raise NoWorkers(f"no dask worker at the scheduler {self.address} for "
                            f"{self.timeout:g} s (--worker-timeout)")

    def wait(self, futures, event: threading.Event) -> None:
        """Until one of ``futures`` is done (``event`` set by their done callbacks),
        checking the workers every second."""
        while not any(f.done() for f in futures):
            event.wait(1.0)
            event.clear()
            self.check()


def _connect(scheduler: Optional[str], workers: Optional[int], n_tasks: int, log,
             worker_timeout: float = WORKER_TIMEOUT):
    """``(client, cluster)``: a Client of the scheduler at ``scheduler`` (cluster None),
    or of a new LocalCluster of ``workers`` single-threaded worker processes. A
    scheduler without workers is given ``worker_timeout`` seconds to get one
    (:class:`NoWorkers` after that)."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise CutsError(f"cannot reach a dask scheduler at {scheduler} within "
                            f"{SCHEDULER_TIMEOUT} ({one_line(exc, 160)}); start one with "
                            f"`dask scheduler` and workers with `dask worker {scheduler}`, or "
                            "leave out --scheduler for a local cluster.") from None
        n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        if n == 0:
            log(f"waiting up to {worker_timeout:g} s for workers at {scheduler} ...")
            try:
                client.wait_for_workers(1, timeout=worker_timeout)
            except (TimeoutError, OSError):
                client.close()
                raise NoWorkers(f"the dask scheduler at {scheduler} has no workers (waited "
                                f"{worker_timeout:g} s, --worker-timeout)") from None
        log(f"dask scheduler {scheduler}: "
            f"{len(client.scheduler_info(n_workers=-1).get('workers', {}))} worker(s)"
            + (f"; dashboard {client.dashboard_link}" if _has_bokeh() else ""))
        return client, None
    if workers is not None and int(workers) < 1:
        raise InputError(f"--workers must be at least 1, got {workers}.")
    n = int(workers) if workers else max(1, min(os.cpu_count() or 1, n_tasks))
    bokeh = _has_bokeh()
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=":8787" if bokeh else None)
    client = Client(cluster, set_as_default=False)
    log(f"local dask cluster: {n} worker process(es), 1 thread each"
        + (f"; dashboard {client.dashboard_link}" if bokeh else
           " (pip install bokeh for the dashboard)"))
    return client, cluster


class _ClusterEncoder:
    """The encoder's bytes on the cluster: one :func:`encoder_blob` task (which the
    scheduler makes again when the workers holding its result die), submitted again
    when it was cancelled or failed."""

    def __init__(self, client, payload: bytes, sha: str, run_id: str):
        self.client, self.payload, self.sha, self.run_id = client, payload, sha, run_id
        self.sent = 0
        self.future = None
        self.get()

    def get(self):
        if self.future is None or self.future.status in ("cancelled", "error"):
            if self.future is not None:
                self.future.release()
            self.sent += 1
            self.future = self.client.submit(encoder_blob, self.payload, self.sha,
                                             key=f"cuts-encoder-{self.run_id}-{self.sent}",
                                             pure=False)
        return self.future


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def address_of(scheduler, client, cluster) -> str:
    """The scheduler's address, for messages."""
    if scheduler:
        return str(scheduler)
    for obj, attr in ((cluster, "scheduler_address"), (getattr(client, "scheduler", None),
                                                       "address")):
        try:
            a = getattr(obj, attr, None)
        except Exception:  # noqa: BLE001 - a closed cluster
            a = None
        if a:
            return str(a)
    return "(unknown)"


def _result_timeout(worker_timeout: float) -> float:
    """How long to fetch a finished task's result: never longer than the batch waits
    for a worker (a result whose worker died is then taken from disk or recomputed)."""
    return max(5.0, min(RESULT_TIMEOUT, float(worker_timeout)))


def _pending_rows(items, rows, error: str = "") -> list[dict]:
    """The summary rows with every input not finished yet as ``pending``."""
    return [r or empty_row(items[j].name) | {"status": "pending", "error": error}
            for j, r in enumerate(rows)]


def _reference_on_cluster(client, watch: _Watchdog, encoder: _ClusterEncoder, path: str,
                          point, enc_sha: str, seed: int, run_id: str, recovered: dict,
                          log) -> dict:
    """:func:`reference_task` on the cluster, submitted again (with the encoder, where
    it was lost) when its worker dies or its data is lost: at most
    :data:`REFERENCE_ATTEMPTS` times."""
    event = threading.Event()
    last = None
    for attempt in range(1, REFERENCE_ATTEMPTS + 1):
        recovered["reference_attempts"] = attempt
        fut = client.submit(reference_task, path, point, encoder.get(), enc_sha, seed,
                            key=f"cuts-reference-{run_id}-{attempt}", pure=False)
        fut.add_done_callback(lambda _f: event.set())
        try:
            watch.wait([fut], event)
            return fut.result(timeout=_result_timeout(watch.timeout))
        except CutsError:       # ClusterLost
            raise
        except Exception as exc:  # noqa: BLE001 - lost with its worker: reference_task never raises
            last = exc
            if attempt < REFERENCE_ATTEMPTS:
                log(f"the reference task was lost ({one_line(exc, 160)}); "
                    f"submitting it again ({attempt + 1} of {REFERENCE_ATTEMPTS})")
        finally:
            fut.release()       # a worker dying later must not recompute the reference
    raise CutsError(f"the reference task was lost with its worker {REFERENCE_ATTEMPTS} times "
                    f"(last: {one_line(last, 160)}); the workers at {watch.address} keep "
                    "dying: see their logs (memory?), then rerun.")


def _reference_key(ref_path: Path, point, enc_sha: str, seed: int) -> dict:
    return {"version": DONE_VERSION, "reference": str(ref_path),
            "reference_signature": input_signature(ref_path),
            "point": [float(v) for v in point], "encoder_sha256": enc_sha, "seed": int(seed)}


def run_batch(inputs, out_dir, *, weights=None, steps=None, epochs=None, seconds=None,
              reference=None,
              point=None, scheduler: Optional[str] = None, workers: Optional[int] = None,
              seed: int = 0, client=None, progress: Progress = None, log: Log = None,
              worker_timeout: float = WORKER_TIMEOUT, _crash_once: Optional[tuple] = None) -> dict:
    """The ``napari-cuts batch`` job (module doc). ``inputs``: files and folders.

    ``client``: an existing :class:`distributed.Client` to use (tests, benchmarks);
    else ``scheduler`` (an address) or a LocalCluster of ``workers`` processes.
    ``worker_timeout``: seconds to wait for a worker when the scheduler has none (module
    doc). Returns ``{"rows", "computed", "skipped", "failed", "encoder", "trained",
    "reference", "seconds_total", "seconds_tasks", "recovered"}`` (``recovered``, when
    the cluster was used: ``reference_attempts``, ``encoder_sends``, and ``resubmitted``
    {stem: times}: what the batch submitted again after losses); ``OUT/summary.csv``
    holds the rows."""
    from .fileutil import make_output_dir, write_json
    from .io import read_image

    log = log or (lambda m: None)
    t_start = time.perf_counter()
    items = expand_inputs(inputs)
    out = make_output_dir(out_dir)
    _clean_partials(out)
    if weights is not None and (steps is not None or epochs is not None or seconds is not None):
        raise InputError("give --weights or a training budget (--steps / --epochs / --seconds), "
                         "not both.")
    if not (math.isfinite(float(worker_timeout)) and float(worker_timeout) >= 0):
        raise InputError(f"--worker-timeout must be a number of seconds >= 0, got {worker_timeout}.")
    if (reference is None) != (point is None):
        raise InputError("--reference and --point go together: the image and the point "
                         "clicked on it.")
    ref_path = None
    if reference is not None:
        ref_path = Path(os.path.abspath(Path(os.fspath(reference)).expanduser()))
        ref_src = read_image(ref_path)
        point = list(check_reference_point(ref_src, point, ref_path.name))
        del ref_src

    # the encoder: given, or trained earlier into OUT/encoder.pt (reused), or to train
    enc_file = out / "encoder.pt"
    trained = False
    if weights is not None:
        enc_file = Path(weights).expanduser()
        if not enc_file.is_file():
            raise InputError(f"encoder weights {enc_file} do not exist (or are not a file).")
        from .encoder import load_encoder

        load_encoder(enc_file, device="cpu")        # a clear WeightsError now, not per task
    elif enc_file.is_file():
        log(f"reusing the cohort encoder {enc_file} (delete it to train a new one)")
    else:
        enc_file = None

    def expectation(enc_sha, ref_key):
        return {"done_version": DONE_VERSION, "encoder_sha256": enc_sha, "seed": int(seed),
                "reference": None if ref_key is None else hashlib.sha256(
                    json.dumps(ref_key, sort_keys=True).encode()).hexdigest()}

    def plan(enc_sha, ref_key):
        rows, todo = [None] * len(items), []
        base = expectation(enc_sha, ref_key)
        for i, it in enumerate(items):
            exp = dict(base, input=str(it.path), input_signature=input_signature(it.path))
            done = is_done(out / it.stem, exp) if enc_sha else None
            if done is not None:
                r = empty_row(it.name) | {k: done["row"].get(k, "") for k in CSV_COLUMNS}
                rows[i] = r | {"image": it.name, "status": "skipped"}
            else:
                todo.append((i, exp))
        return rows, todo

    def cached_reference(enc_sha):
        if ref_path is None or enc_sha is None:
            return None, None
        key = _reference_key(ref_path, point, enc_sha, seed)
        try:
            ref = json.loads((out / "reference.json").read_text())
            if ref.get("key") == key and isinstance(ref.get("prototype"), list):
                return key, ref
        except (OSError, ValueError):
            pass
        return key, None

    enc_sha = _sha256_file(enc_file) if enc_file is not None else None
    ref_key, ref = cached_reference(enc_sha)
    rows, todo = plan(enc_sha, ref_key)
    result = {"rows": rows, "computed": 0, "skipped": len(items) - len(todo), "failed": 0,
              "encoder": str(enc_file) if enc_file else None, "trained": False,
              "reference": None, "seconds_tasks": 0.0}
    if not todo and (ref_path is None or ref is not None):
        write_summary(out / "summary.csv", rows)
        log(f"all {len(items)} inputs are complete in {out}; nothing to do")
        result.update(reference=ref, seconds_total=round(time.perf_counter() - t_start, 3))
        return result

    sample = None
    if enc_file is None:         # read (and check) the training sample before any cluster
        sample = training_sample(items, log)
    own = client is None
    cluster = None
    if own:
        try:
            client, cluster = _connect(scheduler, workers, len(todo), log, worker_timeout)
        except NoWorkers as exc:
            write_summary(out / "summary.csv", _pending_rows(items, rows, "not run: no dask worker"))
            raise NoWorkers(f"{exc}; start some with `dask worker {scheduler}` and rerun.") from None
    address = address_of(scheduler, client, cluster)
    pending: dict = {}           # future -> index of the input
    try:
        if enc_file is None:
            from .pipeline import get_encoder, train_volume_encoder

            arrays, spacings, vols = sample
            sample = None
            log(f"training the cohort encoder on {len(arrays)} of {len(items)} inputs"
                f"{' (volumes)' if vols else ''} ...")
            stage = None if progress is None else (lambda d, t, m: progress(d, t, f"training: {m}"))
            if vols:
                enc = train_volume_encoder(arrays, spacing=spacings, steps=steps, epochs=epochs,
                                           seconds=seconds, seed=seed, progress=stage)
            else:
                enc, _ = get_encoder(arrays, steps=steps, epochs=epochs, seconds=seconds, seed=seed,
                                     progress=stage)
            del arrays
            enc_file = out / "encoder.pt"
            enc.save(enc_file)
            trained = True
            enc_sha = _sha256_file(enc_file)
            ref_key, ref = cached_reference(enc_sha)
            rows, todo = plan(enc_sha, ref_key)
            result.update(rows=rows, skipped=len(items) - len(todo), encoder=str(enc_file),
                          trained=True)
        payload = enc_file.read_bytes()
        run_id = uuid.uuid4().hex[:8]
        watch = _Watchdog(client, address, worker_timeout, log)
        encoder = _ClusterEncoder(client, payload, enc_sha, run_id)
        recovered = {"reference_attempts": 0, "encoder_sends": 0, "resubmitted": {}}
        result["recovered"] = recovered

        if ref_path is not None and ref is None:
            log(f"segmenting the reference {ref_path.name} at {tuple(point)} ...")
            got = _reference_on_cluster(client, watch, encoder, str(ref_path), point, enc_sha,
                                        seed, run_id, recovered, log)
            if "error" in got:
                raise InputError(f"reference {ref_path.name}: {got['error']}")
            ref = dict(got, key=ref_key)
            write_json(out / "reference.json", ref)
        if ref is not None:
            log(f"reference structure: level {ref['level']} ({ref['n_clusters']} clusters), "
                f"{ref['mask_pixels']} pixels ({ref['area_fraction']:.2%} of the image)")
        result["reference"] = ref
        reference_arg = None if ref is None else {"prototype": ref["prototype"],
                                                  "centroid": ref.get("centroid")}

        t_tasks = time.perf_counter()
        expected = dict(todo)
        attempts: dict = {}
        event = threading.Event()

        def wake(_f):
            event.set()

        def submit(i):
            it = items[i]
            attempts[i] = attempts.get(i, 0) + 1
            f = client.submit(process_input, str(it.path), it.stem, str(out), encoder.get(),
                              enc_sha, int(seed), expected[i], reference_arg, _crash_once,
                              str(enc_file) if enc_file is not None else None,
                              key=f"cuts-{it.stem}-{run_id}-{attempts[i]}", pure=False)
            pending[f] = i
            f.add_done_callback(wake)

        for i, _exp in todo:
            submit(i)
        total, done_n = len(items), len(items) - len(todo)
        if progress is not None:
            progress(done_n, total, f"batch: {done_n}/{total} done")
        write_summary(out / "summary.csv", _pending_rows(items, rows))
        while pending:
            watch.wait(list(pending), event)
            for f in [f for f in pending if f.done()]:
                i = pending.pop(f)
                it = items[i]
                try:
                    row = f.result(timeout=_result_timeout(worker_timeout))
                except Exception as exc:  # noqa: BLE001 - lost with its worker(s), not a bad input
                    done = is_done(out / it.stem, expected[i])
                    if done is not None:       # published before its worker died
                        row = dict(done["row"])
                    elif attempts[i] < INPUT_ATTEMPTS:
                        # the scheduler gave up on it (its workers kept dying: KilledWorker)
                        # or cancelled it with lost data: submit it again (the encoder too
                        # where it was lost); its outputs are only ever published whole
                        log(f"{it.stem}: task lost ({one_line(exc, 160)}); "
                            f"submitting it again ({attempts[i] + 1} of {INPUT_ATTEMPTS})")
                        recovered["resubmitted"][it.stem] = attempts[i]
                        submit(i)
                        continue
                    else:
                        row = empty_row("") | {"status": "error", "error": (
                            f"lost with its worker {attempts[i]} times; last: {one_line(exc)}")}
                finally:
                    f.release()
                row = dict(row, image=it.name)
                rows[i] = row
                done_n += 1
                if row["status"] == "ok":
                    result["computed"] += 1
                else:
                    result["failed"] += 1
                    log(f"{it.path.name}: error: {row['error']}")
                if progress is not None:
                    progress(done_n, total, f"batch: {it.stem} {row['status']}")
                else:
                    log(f"[{done_n}/{total}] {it.stem}: {row['status']}")
                write_summary(out / "summary.csv", _pending_rows(items, rows))
        result["seconds_tasks"] = round(time.perf_counter() - t_tasks, 3)
        recovered["encoder_sends"] = encoder.sent
    except ClusterLost as exc:
        for f in pending:
            f.release()
        _clean_partials(out)
        why = "no dask worker" if isinstance(exc, NoWorkers) else "dask scheduler lost"
        write_summary(out / "summary.csv", _pending_rows(items, rows, f"not run: {why}"))
        finished = sum(1 for r in rows if r is not None and r.get("status") != "error")
        fix = (f"start workers (`dask worker {address}`)" if isinstance(exc, NoWorkers)
               else "start the scheduler and its workers again")
        raise type(exc)(f"{exc}: {finished} of {len(items)} inputs are complete, the rest "
                        f"pending in {out / 'summary.csv'}; {fix} and rerun the same command "
                        "to resume.") from None
    finally:
        if own:
            try:
                client.close()
            finally:
                if cluster is not None:
                    cluster.close()
    _clean_partials(out)
    write_summary(out / "summary.csv", rows)
    result.update(rows=rows, trained=trained, seconds_total=round(time.perf_counter() - t_start, 3))
    return result
