"""Prompts in the CUTS dock widget: the folder the solver reads, and solving off the GUI
thread (composed into the objects part, :mod:`.clicks`).

The widget solves an object from all of its prompts with the same code as the command
line and ``evaluate``: :func:`napari_cuts.prompts.segment_from_prompts`, which reads a
folder holding ``hierarchy.npz`` and ``prompts.npz``. :class:`WorkFolders` gives that
folder for each hierarchy of the widget (key 0 for an image or a volume, the slice
index for a stack of colour images segmented one by one):

- after Segment, a temporary working folder written in a background thread right
  after the hierarchy arrives (:func:`write_work_folder`: the hierarchy, and the image
  on its grid with its spacing through :func:`napari_cuts.prompts.save_prompt_data`),
  removed when the results go;
- an opened session or ``segment`` output folder that has both files is used as it is;
  one written before prompts (no ``prompts.npz``) gets a working folder like a fresh
  segmentation.

:class:`Resolver` runs one solve at a time in a napari worker; a newer request for an
object supersedes an older one (a generation counter per object: a stale answer is
dropped, and only the newest waiting request of each object is run next). With
``run_sync`` (tests) it solves on the calling thread. Prompts that are one positive
point and nothing else are the tool's click, answered at once on the GUI thread from
the hierarchy in memory (:func:`one_click`, the answer ``segment_from_prompts`` gives
them by its contract), as fast as a click always was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

HIERARCHY_FILE = "hierarchy.npz"
PROMPTS_FILE = "prompts.npz"
#: Seconds a solve waits for its working folder to be written.
FOLDER_TIMEOUT = 600.0


def has_prompt_data(folder) -> bool:
    """True when ``folder`` holds what :func:`segment_from_prompts` reads."""
    try:
        f = Path(folder)
        return (f / HIERARCHY_FILE).is_file() and (f / PROMPTS_FILE).is_file()
    except (TypeError, OSError):
        return False


def write_work_folder(hierarchy, image, spacing, hierarchy_file=None) -> Path:
    """A new temporary folder with ``hierarchy.npz`` (``hierarchy`` saved, or the file
    ``hierarchy_file`` linked or copied) and ``prompts.npz`` (``image`` on the
    hierarchy's grid, optionally with a trailing channel axis, and ``spacing``, mm per
    spatial axis). The in-memory hierarchy is what the solver then uses."""
    from ..prompts import save_prompt_data
    from ..session import remember_hierarchy

    out = Path(tempfile.mkdtemp(prefix="napari-cuts-prompts-"))
    try:
        hp = out / HIERARCHY_FILE
        if hierarchy_file is not None and Path(hierarchy_file).is_file():
            try:
                os.link(hierarchy_file, hp)
            except OSError:
                shutil.copyfile(hierarchy_file, hp)
        else:
            hierarchy.save(hp)
        remember_hierarchy(hp, hierarchy)
        save_prompt_data(out, image=np.asarray(image), spacing=spacing)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out


class WorkFolders:
    """The folder :func:`segment_from_prompts` reads, per hierarchy key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: dict = {}
        self._events: dict = {}
        self._errors: dict = {}
        self._made: list = []          # temporary folders written here (removed by clear)
        self._epoch = 0

    def use(self, key: int, folder) -> None:
        """Solve hierarchy ``key`` in ``folder`` (it has both files)."""
        with self._lock:
            self._ready[key] = Path(folder)
            self._errors.pop(key, None)
            ev = self._events.pop(key, None)
        if ev is not None:
            ev.set()

    def prepare(self, key: int, hierarchy, image, spacing, *, hierarchy_file=None,
                sync: bool = False) -> None:
        """Write a working folder for hierarchy ``key`` in a background thread (now with
        ``sync``); :meth:`get` waits for it."""
        ev = threading.Event()
        with self._lock:
            self._ready.pop(key, None)
            self._errors.pop(key, None)
            self._events[key] = ev
            epoch = self._epoch

        def work():
            path, error = None, None
            try:
                path = write_work_folder(hierarchy, image, spacing, hierarchy_file)
            except BaseException as exc:  # noqa: BLE001 - handed to get()
                error = exc
                log.warning("napari-cuts: the prompt folder could not be written: %s", exc)
            with self._lock:
                if epoch != self._epoch or self._events.get(key) is not ev:
                    if path is not None:             # the results went meanwhile
                        shutil.rmtree(path, ignore_errors=True)
                elif error is not None:
                    self._errors[key] = error
                else:
                    self._ready[key] = path
                    self._made.append(path)
            ev.set()

        if sync:
            work()
        else:
            threading.Thread(target=work, name="napari-cuts prompt folder", daemon=True).start()

    def folder(self, key: int = 0) -> Optional[Path]:
        """The folder of hierarchy ``key`` when it is ready (never waits), else None."""
        return self._ready.get(key)

    def get(self, key: int = 0, timeout: float = FOLDER_TIMEOUT) -> Path:
        """The folder of hierarchy ``key``, waiting while it is written. Raises
        :class:`InputError` when there is none or it could not be written."""
        ev = self._events.get(key)
        if key not in self._ready and ev is not None:
            ev.wait(timeout)
        with self._lock:
            if key in self._ready:
                return self._ready[key]
            err = self._errors.get(key)
        if err is not None:
            raise InputError(f"the prompts cannot be solved: their folder could not be "
                             f"written ({err}).")
        raise InputError("the prompts cannot be solved yet: segment the image (or open a "
                         "session) first.")

    def clear(self) -> None:
        """Forget every folder; remove the temporary ones (also those still written)."""
        with self._lock:
            self._epoch += 1
            made, self._made = self._made, []
            self._ready.clear()
            self._errors.clear()
            events, self._events = self._events, {}
        for ev in events.values():
            ev.set()
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


def solve_prompts(folders: WorkFolders, prompts, level: Optional[int], shape: tuple,
                  per_slice: bool = False, n_levels: Optional[dict] = None) -> np.ndarray:
    """The mask of ``prompts`` (a :class:`~napari_cuts._widget.objects.Prompts`) at
    ``level``: :func:`segment_from_prompts` on the folder of the hierarchy. For a stack
    segmented image by image (``per_slice``), each slice that holds a prompt is solved
    from its own prompts on its own hierarchy (``n_levels[z]`` levels: the level is
    clipped to them)."""
    from ..prompts import segment_from_prompts

    scr = prompts.scribbles(shape)
    if not per_slice:
        return np.asarray(segment_from_prompts(folders.get(0), prompts.positive,
                                               prompts.negative, scribbles=scr, level=level),
                          bool)
    mask = np.zeros(shape, bool)
    zs = {p[0] for p in prompts.positive + prompts.negative}
    if scr is not None:
        zs |= {int(z) for z in np.nonzero(scr.any(axis=(1, 2)))[0]}
    for z in sorted(zs):
        pos = [p[1:] for p in prompts.positive if p[0] == z]
        neg = [p[1:] for p in prompts.negative if p[0] == z]
        lv = level
        if lv is not None and n_levels is not None and z in n_levels:
            lv = int(min(int(lv), n_levels[z] - 1))
        mask[z] = segment_from_prompts(folders.get(z), pos, neg,
                                       scribbles=None if scr is None else scr[z], level=lv)
    return mask


def one_click(hierarchy_for, prompts, level: Optional[int], shape: tuple,
              per_slice: bool = False) -> Optional[np.ndarray]:
    """The mask of prompts that are one positive point and nothing else, from the
    hierarchy in memory (``hierarchy_for(z)``; z = 0 but for a stack): what
    :func:`segment_from_prompts` answers for them by its contract (the connected
    structure at ``level``, or :meth:`~napari_cuts.hierarchy.Hierarchy.click_mask`
    for None), at the cost of a click (tens of ms) and without waiting for the folder.
    None for any other prompts."""
    from ..prompts import single_click

    if len(set(prompts.positive)) != 1:
        return None
    p = prompts.positive[0]
    z = p[0] if per_slice else 0
    local = p[1:] if per_slice else p
    m = single_click(hierarchy_for(z), [local], prompts.negative, prompts.has_scribbles, level)
    if m is None:
        return None
    if not per_slice:
        return np.asarray(m, bool)
    mask = np.zeros(shape, bool)
    mask[z] = m
    return mask


@dataclass(frozen=True)
class Request:
    """One solve: the object ``label_id``, its ``prompts`` and ``level``, and the
    object's generation when it was asked for."""

    label_id: int
    prompts: object
    level: Optional[int]
    generation: int


class Resolver:
    """Solves requests one at a time, off the GUI thread.

    ``solve(request) -> mask`` runs in a napari worker; ``on_done(request, mask)`` and
    ``on_error(request, exception)`` are called on the GUI thread, only for the newest
    request of each object (stale answers are dropped: ``dropped`` counts them)."""

    def __init__(self, solve: Callable, on_done: Callable, on_error: Callable) -> None:
        self.solve = solve
        self.on_done = on_done
        self.on_error = on_error
        self.run_sync = False
        self._generation: dict = {}
        self._pending: dict = {}           # label id -> newest waiting request
        self._running: Optional[Request] = None
        self._worker = None
        self.dropped = 0

    @property
    def busy(self) -> bool:
        """True while a solve runs or waits."""
        return self._running is not None or bool(self._pending)

    @property
    def waiting(self) -> bool:
        """True while requests wait for the running solve to end."""
        return bool(self._pending)

    def request(self, label_id: int, prompts, level: Optional[int]) -> Request:
        """Solve ``prompts`` at ``level`` for object ``label_id``; supersedes the object's
        earlier requests."""
        gen = self._generation.get(label_id, 0) + 1
        self._generation[label_id] = gen
        req = Request(int(label_id), prompts, None if level is None else int(level), gen)
        if self.run_sync:
            try:
                mask = self.solve(req)
            except Exception as exc:  # noqa: BLE001 - shown by on_error
                self._failed(req, exc)
            else:
                self._done(req, mask)
            return req
        self._pending.pop(req.label_id, None)
        self._pending[req.label_id] = req
        if self._running is None:
            self._next()
        return req

    def supersede(self, label_id: int) -> None:
        """Object ``label_id`` was answered another way: drop its waiting request and
        any answer still to come for it."""
        self._pending.pop(int(label_id), None)
        self._generation[int(label_id)] = self._generation.get(int(label_id), 0) + 1

    def stale(self, req: Request) -> bool:
        return self._generation.get(req.label_id) != req.generation

    def forget(self) -> None:
        """Drop every waiting request and every answer still to come."""
        self._pending.clear()
        for k in list(self._generation):
            self._generation[k] += 1
        if self._running is not None:
            self._generation[self._running.label_id] = \
                self._generation.get(self._running.label_id, 0) + 1

    def stop(self, *_args) -> None:
        """Forget everything and ask a running worker to quit (the widget closes)."""
        self.forget()
        worker = self._worker
        if worker is not None:
            try:
                worker.quit()
            except RuntimeError:
                pass

    # ------------------------------------------------------------- internals
    def _done(self, req: Request, mask) -> None:
        if self.stale(req):
            self.dropped += 1
            return
        try:
            self.on_done(req, mask)
        except RuntimeError:      # the widget is gone
            self.forget()

    def _failed(self, req: Request, exc: BaseException) -> None:
        if self.stale(req):
            self.dropped += 1
            return
        try:
            self.on_error(req, exc)
        except RuntimeError:
            self.forget()

    def _next(self) -> None:
        if not self._pending:
            return
        label_id = next(iter(self._pending))
        req = self._pending.pop(label_id)
        from napari.qt.threading import create_worker

        worker = create_worker(self.solve, req, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda mask, req=req: self._done(req, mask))
        worker.errored.connect(lambda exc, req=req: self._failed(req, exc))
        worker.finished.connect(self._finished)
        self._running, self._worker = req, worker
        worker.start()

    def _finished(self, *_args) -> None:
        self._running, self._worker = None, None
        self._next()
