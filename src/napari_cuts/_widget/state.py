"""The shared state of the CUTS dock widget: one small object that its parts share.

No Qt and no napari here (the core's rule holds for this file too): the state is plain
Python, so its rules are tested without a viewer (``tests/test_widget_state.py``).

:class:`WidgetState` holds what more than one part of the widget reads or changes:

- ``source``: the chosen input (:class:`~napari_cuts._widget.settings.Source`), set at
  Segment or when a session is adopted; ``results``: slice index -> ``SegmentResult``
  (one entry, ``0``, for a 2D image or a volume); ``encoder``;
- the view: ``level`` (hierarchy level of the slider, 0 = finest), ``persistent`` (the
  persistent structures instead of a level), ``hide_background``, ``follow`` (the mask
  follows the slider), ``levels_layer`` (the "CUTS levels" layer, an opaque reference);
- ``objects``: the :class:`~napari_cuts._widget.objects.ObjectSet` (None before results),
  and ``current`` (its selected object); ``object_message``: the solver's line under the
  object list;
- ``settings`` (:class:`~napari_cuts._widget.settings.Settings`, what the controls show),
  ``job`` (the name of the running job, None when idle; ``busy`` says whether one
  runs), ``last_message`` (the last notification, ``(level, text)``).

Every field is an attribute; assigning a different value notifies the listeners of that
field, ``listener(value)``, and the listeners of every change, ``listener(name,
value)``. A change inside a mutable value (a result added to ``results``, an edit of the
objects) is announced by the part that made it with :meth:`WidgetState.changed`
(``state.add_result(i, res)`` and ``state.objects_changed()`` do it for the usual cases).
:meth:`WidgetState.quietly` holds the notifications back while a part sets several
fields that it then shows itself (adopting a segmentation or a session).
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import contextmanager
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)


class Signal:
    """A list of callbacks (no Qt): ``connect``, ``disconnect``, ``emit(*args)``.

    A callback that raises is logged and the others still run: one part's failure does
    not stop the others from seeing the change."""

    def __init__(self) -> None:
        self._slots: list[Callable] = []

    def connect(self, slot: Callable) -> Callable:
        if slot not in self._slots:
            self._slots.append(slot)
        return slot

    def disconnect(self, slot: Callable) -> None:
        if slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args) -> None:
        for slot in list(self._slots):
            try:
                slot(*args)
            except Exception:  # noqa: BLE001 - a listener never breaks the state
                log.exception("napari-cuts: a state listener failed")

    def __len__(self) -> int:
        return len(self._slots)


#: The fields of the state and their initial values (mutable ones made per instance).
FIELDS: dict[str, Callable[[], Any]] = {
    "source": lambda: None,
    "results": dict,
    "encoder": lambda: None,
    "level": lambda: 0,
    "persistent": lambda: False,
    "hide_background": lambda: True,
    "follow": lambda: False,
    "levels_layer": lambda: None,
    "objects": lambda: None,
    "object_message": lambda: "",
    "settings": lambda: None,
    "job": lambda: None,
    "last_message": lambda: None,
}


class WidgetState:
    """The widget's shared state (see the module docstring); ``on(name, fn)`` listens to
    one field, ``any_change`` to all of them."""

    def __init__(self, **values) -> None:
        object.__setattr__(self, "_signals", {name: Signal() for name in FIELDS})
        object.__setattr__(self, "any_change", Signal())
        object.__setattr__(self, "_quiet", 0)
        object.__setattr__(self, "_held", [])
        for name, make in FIELDS.items():
            object.__setattr__(self, name, make())
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise AttributeError(f"WidgetState has no field {', '.join(sorted(unknown))}")
        for name, value in values.items():
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------- listening
    def on(self, name: str, listener: Callable[[Any], None]) -> Callable:
        """Call ``listener(value)`` whenever field ``name`` changes; returns it."""
        return self._signal(name).connect(listener)

    def off(self, name: str, listener: Callable) -> None:
        self._signal(name).disconnect(listener)

    def _signal(self, name: str) -> Signal:
        try:
            return self._signals[name]
        except KeyError:
            raise AttributeError(f"WidgetState has no field {name!r}") from None

    # -------------------------------------------------------------- changing
    def __setattr__(self, name: str, value) -> None:
        if name not in FIELDS:
            raise AttributeError(f"WidgetState has no field {name!r}")
        old = getattr(self, name)
        object.__setattr__(self, name, value)
        if not _same(old, value):
            self.changed(name)

    def set(self, **values) -> None:
        """Set several fields, then notify (each changed field once, in order)."""
        with self.quietly(release=True):
            for name, value in values.items():
                setattr(self, name, value)

    def changed(self, name: str) -> None:
        """Announce that field ``name`` changed (also a change inside its value)."""
        sig = self._signal(name)
        if self._quiet:
            if name not in self._held:
                self._held.append(name)
            return
        value = getattr(self, name)
        sig.emit(value)
        self.any_change.emit(name, value)

    @contextmanager
    def quietly(self, release: bool = False):
        """Hold notifications back inside the block. ``release=False`` (default): they
        are dropped (the caller shows what it changed itself); ``True``: each changed
        field is announced once when the block ends."""
        object.__setattr__(self, "_quiet", self._quiet + 1)
        try:
            yield self
        finally:
            object.__setattr__(self, "_quiet", self._quiet - 1)
            if not self._quiet:
                held = list(self._held)
                self._held.clear()
                if release:
                    for name in held:
                        self.changed(name)

    # ------------------------------------------------------- common changes
    def add_result(self, i: int, result) -> None:
        """Hierarchy ``i`` arrived (one slice of a stack, or the only one)."""
        self.results[int(i)] = result
        self.changed("results")

    def clear_results(self, source=None) -> None:
        """New segmentation of ``source`` starting: no results, no objects."""
        self.set(source=source, results={}, objects=None, object_message="")

    def objects_changed(self) -> None:
        """The objects (their prompts, masks, names or the selection) changed."""
        self.changed("objects")

    # ------------------------------------------------------------ derived
    @property
    def busy(self) -> bool:
        """True while a job (training, segmenting, PHATE, a cohort run) runs."""
        return self.job is not None

    @property
    def has_results(self) -> bool:
        return bool(self.results)

    @property
    def current(self):
        """The selected object of ``objects`` (None without one)."""
        return None if self.objects is None else self.objects.current

    @property
    def mask(self):
        """The selected object's mask (None before its first solve)."""
        obj = self.current
        return None if obj is None else obj.mask

    @property
    def click_level(self) -> Optional[int]:
        """The level prompts are solved at: the slider's, None with the persistent view
        (the tool then picks its own)."""
        return None if self.persistent else int(self.level)

    @property
    def one_volume(self) -> bool:
        return self.source is not None and self.source.one_volume

    @property
    def volume(self) -> bool:
        return self.source is not None and self.source.volume

    def n_levels(self) -> int:
        """Levels of the deepest hierarchy (0 without results)."""
        return max((r.hierarchy.n_levels for r in self.results.values()), default=0)

    def result_shape(self) -> tuple:
        """Shape of the result layers: ``(H, W)``, or ``(Z, Y, X)`` for a volume or stack."""
        src = self.source
        return ((len(src.slices),) if src.volume else ()) + tuple(src.shape)

    def __repr__(self) -> str:
        parts = [f"{n}={getattr(self, n)!r}" for n in ("level", "persistent", "job")]
        return (f"WidgetState(source={'set' if self.source is not None else None}, "
                f"results={sorted(self.results)}, {', '.join(parts)})")


def _same(a, b) -> bool:
    """Whether an assignment changed nothing (identity, or equal plain values)."""
    if a is b:
        return True
    if type(a) is type(b) and (isinstance(a, (bool, int, float, str, tuple))
                               or dataclasses.is_dataclass(a)):
        try:
            return bool(a == b)
        except Exception:  # noqa: BLE001 - e.g. tuples holding arrays
            return False
    return False
