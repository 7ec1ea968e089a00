"""Running the core's long jobs off the GUI thread, for the CUTS dock widget.

A job is a generator function that takes ``progress`` and ``cancel`` hooks (the
core's callbacks), may ``yield`` partial results (a finished slice of a volume) and
``return``s its final result. :class:`JobRunner` runs it in a napari
``thread_worker`` (or synchronously when ``run_sync`` is set, for tests), and every
callback it makes reaches the GUI thread through Qt signals:

- ``progress(done, total, message)`` called by the core in the worker thread is
  re-emitted by :class:`_Bridge`, a QObject living in the GUI thread, so Qt queues the
  call to the GUI thread (never touch widgets from the worker);
- ``cancel()`` reads a :class:`threading.Event` that :meth:`JobRunner.cancel` sets.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Optional

from qtpy.QtCore import QObject, Signal

log = logging.getLogger(__name__)


class _Bridge(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progress = Signal(int, int, str)


class _State:
    """What a closing widget needs to stop its worker (holds no reference to the widget)."""

    def __init__(self) -> None:
        self.cancel_event = threading.Event()
        self.worker = None

    def stop(self, *_args) -> None:
        """Set the cancel flag and ask the worker to quit (safe to call twice)."""
        self.cancel_event.set()
        worker = self.worker
        if worker is not None:
            try:
                worker.quit()
            except RuntimeError:  # its Qt signals are already gone
                pass


class JobRunner:
    """Runs one job at a time and routes its events to GUI-thread callbacks.

    ``on_progress(done, total, message)``, ``on_yield(item)``, ``on_return(result)``,
    ``on_error(exception)`` and ``on_finish()`` are called in the GUI thread;
    ``on_finish`` always comes last, after a result or an error.
    """

    def __init__(self, on_progress: Callable[[int, int, str], None]) -> None:
        self.run_sync = False
        self.state = _State()
        self._bridge = _Bridge()
        self._bridge.progress.connect(on_progress)
        self.name: Optional[str] = None

    @property
    def busy(self) -> bool:
        """True while a job is running."""
        return self.name is not None

    def cancel(self) -> None:
        """Ask the running job to stop at its next check (the core raises Cancelled)."""
        self.state.cancel_event.set()

    def cancelled(self) -> bool:
        """The ``cancel()`` hook handed to the core."""
        return self.state.cancel_event.is_set()

    def _emit_progress(self, done: int, total: int, message: str) -> None:
        try:
            self._bridge.progress.emit(int(done), int(total), str(message))
        except RuntimeError:  # the widget was deleted while the worker ran
            self.state.cancel_event.set()

    def start(self, name: str, job, *, on_yield: Callable[[Any], None],
              on_return: Callable[[Any], None], on_error: Callable[[BaseException], None],
              on_finish: Callable[[], None]) -> None:
        """Run ``job(progress, cancel)`` (a generator function)."""
        if self.busy:
            raise RuntimeError(f"a job ({self.name}) is already running")
        self.name = name
        self.state.cancel_event.clear()
        gen = job(self._emit_progress, self.cancelled)

        if self.run_sync:
            try:
                while True:
                    try:
                        item = next(gen)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    on_yield(item)
                on_return(result)
            except Exception as exc:  # noqa: BLE001 - shown to the user by on_error
                on_error(exc)
            finally:
                self.name = None
                on_finish()
            return

        from napari.qt.threading import GeneratorWorker, create_worker

        def body():
            return (yield from gen)

        worker = create_worker(body, _start_thread=False, _worker_class=GeneratorWorker,
                               _ignore_errors=True)
        worker.yielded.connect(on_yield)
        worker.returned.connect(on_return)
        worker.errored.connect(on_error)

        def finished():
            self.name = None
            self.state.worker = None
            on_finish()

        worker.finished.connect(finished)
        self.state.worker = worker
        worker.start()
