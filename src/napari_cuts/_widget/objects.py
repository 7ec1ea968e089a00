"""Objects of a labelling session, in numpy only (no Qt, no napari): the widget's model.

An *object* (:class:`CutObject`) is one structure the user is labelling (the optic
disc, a lesion): a label id, a name, a colour, the clicks that made it and its own
mask, kept whole (objects may overlap: a lesion inside an organ). Each click
(:class:`Click`) remembers the hierarchy level its structure was taken at, so every
clicked structure walks its own lineage (:meth:`ObjectSet.step`: grow = the next real
merge that holds the click, shrink = the largest strictly smaller structure that holds
it), without moving the global slider.

:class:`ObjectSet` holds the objects, the current one, and an undo/redo history of
whole states. Objects are immutable (frozen dataclasses whose masks are never written
in place), so a state is a tuple of references and a history step costs no copy of a
mask; undo and redo restore the labels and the object list together.

:class:`HierarchyStructures` answers "which pixels is the structure under this point
at this level" from hierarchies (``np.take`` of one lookup table over the base map),
for one hierarchy over the whole image or volume, or one per slice (``per_slice``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import numpy as np

#: Undo steps kept (the issue asks for at least 20).
MAX_HISTORY = 50

#: Object colours (RGBA, 0..1), by label id (id 1 the first); distinct on a fundus and
#: on grey MRI, and none of them the yellow of the "CUTS mask" highlight.
PALETTE = (
    (0.12, 0.47, 0.71, 1.0), (0.84, 0.15, 0.16, 1.0), (0.17, 0.63, 0.17, 1.0),
    (0.58, 0.40, 0.74, 1.0), (1.00, 0.50, 0.05, 1.0), (0.09, 0.75, 0.81, 1.0),
    (0.89, 0.47, 0.76, 1.0), (0.55, 0.34, 0.29, 1.0), (0.74, 0.74, 0.13, 1.0),
    (0.50, 0.50, 0.50, 1.0),
)

MODES = ("replace", "add", "remove")


def colour_of(label_id: int) -> tuple:
    return PALETTE[(int(label_id) - 1) % len(PALETTE)]


@dataclass(frozen=True)
class Click:
    """One click: ``mode`` ("replace", "add", "remove"), ``point`` (one index per axis of
    the result layers), ``level`` (the hierarchy level of its structure; None: the
    persistent map) and ``connected`` (the structure is only the part of the cluster
    connected to the click, not every part of the image the cluster covers)."""

    mode: str
    point: tuple
    level: Optional[int]
    connected: bool = False

    def to_json(self) -> dict:
        return {"mode": self.mode, "point": [int(v) for v in self.point],
                "level": None if self.level is None else int(self.level),
                "connected": bool(self.connected)}

    @classmethod
    def from_json(cls, d: dict) -> "Click":
        lv = d.get("level")
        return cls(str(d.get("mode", "add")), tuple(int(v) for v in d["point"]),
                   None if lv is None else int(lv), bool(d.get("connected", False)))


@dataclass(frozen=True)
class CutObject:
    """One object: ``id`` (the label value, >= 1), ``name``, ``colour`` (RGBA 0..1),
    ``clicks`` and ``mask`` (bool, the result layers' shape; None before a click).
    Never written in place: a change makes a new object (:func:`dataclasses.replace`)."""

    id: int
    name: str
    colour: tuple
    clicks: tuple = ()
    mask: Optional[np.ndarray] = field(default=None, compare=False, repr=False)

    @property
    def levels(self) -> list:
        """The levels of its clicked structures, in click order (None: persistent)."""
        return [c.level for c in self.clicks]

    def level_text(self) -> str:
        """The object's level as the list shows it: "12", "10-12" (structures at several
        levels), "persistent", or "" before a click."""
        lv = [v for v in self.levels if v is not None]
        if not self.clicks:
            return ""
        if not lv:
            return "persistent"
        lo, hi = min(lv), max(lv)
        return str(lo) if lo == hi else f"{lo}-{hi}"

    def pixels(self) -> int:
        return 0 if self.mask is None else int(np.count_nonzero(self.mask))

    def to_json(self) -> dict:
        return {"id": int(self.id), "name": self.name,
                "colour": [round(float(c), 4) for c in self.colour],
                "clicks": [c.to_json() for c in self.clicks],
                "levels": [None if v is None else int(v) for v in self.levels],
                "pixels": self.pixels()}


def measure(mask: Optional[np.ndarray], scale, volume: bool) -> dict:
    """``pixels`` and ``mm2`` (2D) or ``ml`` (3D) of ``mask`` from ``scale`` (mm/voxel)."""
    n = 0 if mask is None else int(np.count_nonzero(mask))
    sc = np.asarray(scale, float)
    if volume:
        return {"pixels": n, "ml": n * float(np.prod(sc[-3:])) / 1000.0}
    return {"pixels": n, "mm2": n * float(np.prod(sc[-2:]))}


class HierarchyStructures:
    """Structures of one hierarchy (``per_slice=False``: ``hierarchy_for(0)`` covers the
    whole image or volume) or of one hierarchy per slice (``hierarchy_for(z)``, points
    ``(z, y, x)``, structures ``(H, W)``). ``persistent_for(z)`` gives the persistent map
    for clicks made on it (``level=None``)."""

    def __init__(self, hierarchy_for: Callable[[int], object], per_slice: bool = False,
                 persistent_for: Optional[Callable[[int], np.ndarray]] = None) -> None:
        self.hierarchy_for = hierarchy_for
        self.per_slice = bool(per_slice)
        self.persistent_for = persistent_for

    def _local(self, point) -> tuple[object, tuple, int]:
        p = tuple(int(v) for v in point)
        z = p[0] if self.per_slice else 0
        return self.hierarchy_for(z), (p[1:] if self.per_slice else p), z

    def structure(self, point, level: Optional[int], connected: bool = False) -> np.ndarray:
        """Bool mask of the structure under ``point`` at ``level`` (a slice's ``(H, W)``
        for ``per_slice``); ``connected``: only the part connected to the point
        (4-connected in 2D, 6-connected in 3D)."""
        hier, p, z = self._local(point)
        if level is None:
            pers = self.persistent_for(z)
            m = pers == pers[p]
            if connected:
                from scipy import ndimage

                lab, _ = ndimage.label(m)
                m = lab == lab[p]
            return m
        lv = int(np.clip(level, 0, hier.n_levels - 1))
        if connected:
            return hier.structure(p, lv, connected=True)
        lut = np.asarray(hier.lut(lv))
        fin = hier.finest
        return np.take(lut == lut[fin[p]], fin)

    def step_level(self, point, level: Optional[int], step: int, connected: bool = False) -> int:
        """The level one step up (+1) or down (-1) the lineage of ``point`` from ``level``
        (the persistent map's structure starts at the level of the same size); with
        ``connected``, steps between sizes of the connected structure."""
        hier, p, z = self._local(point)
        if level is None:
            size = int(np.count_nonzero(self.structure(point, None, connected)))
            lin = hier.structure_lineage(p) if connected else hier.lineage(p)
            level = min(range(len(lin)), key=lambda k: (abs(lin[k][2] - size), k))
        level = int(np.clip(level, 0, hier.n_levels - 1))
        return int(hier.step_level(p, level, int(step), connected=connected))


class ObjectSet:
    """The objects of a session, the current one, and an undo/redo history.

    ``shape``: the result layers' shape, ``(H, W)`` or ``(Z, Y, X)``; ``per_slice``:
    points are ``(z, y, x)`` into a stack whose slices have their own hierarchies.
    Every change (new object, click, grow, shrink, rename, delete) is one undo step.
    """

    def __init__(self, shape, per_slice: bool = False, max_history: int = MAX_HISTORY) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.per_slice = bool(per_slice)
        self.max_history = int(max_history)
        self.objects: list[CutObject] = []
        self.current_id: Optional[int] = None
        self._undo: list = []
        self._redo: list = []

    # ------------------------------------------------------------ state
    def _state(self) -> tuple:
        return (tuple(self.objects), self.current_id)

    def _set_state(self, state) -> None:
        objs, cur = state
        self.objects, self.current_id = list(objs), cur

    def _push(self) -> None:
        self._undo.append(self._state())
        del self._undo[:-self.max_history]
        self._redo.clear()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo(self) -> bool:
        """Go back one change (labels and object list together); False if none."""
        if not self._undo:
            return False
        self._redo.append(self._state())
        self._set_state(self._undo.pop())
        return True

    def redo(self) -> bool:
        """Replay the last undone change; False if none."""
        if not self._redo:
            return False
        self._undo.append(self._state())
        self._set_state(self._redo.pop())
        return True

    # ----------------------------------------------------------- lookup
    def get(self, label_id: Optional[int]) -> Optional[CutObject]:
        return next((o for o in self.objects if o.id == label_id), None)

    @property
    def current(self) -> Optional[CutObject]:
        return self.get(self.current_id)

    @property
    def ids(self) -> list[int]:
        return [o.id for o in self.objects]

    def _put(self, obj: CutObject) -> None:
        self.objects = [obj if o.id == obj.id else o for o in self.objects]

    def next_id(self) -> int:
        return max(self.ids, default=0) + 1

    # ---------------------------------------------------------- changes
    def _new(self, name: Optional[str] = None) -> CutObject:
        i = self.next_id()
        obj = CutObject(i, name or f"Object {i}", colour_of(i))
        self.objects.append(obj)
        self.current_id = i
        return obj

    def new_object(self, name: Optional[str] = None) -> int:
        """Start the next object (id = the largest id + 1) and make it current."""
        self._push()
        return self._new(name).id

    def select(self, label_id: int) -> None:
        """Make object ``label_id`` current (clicks go into it); not an undo step."""
        if self.get(label_id) is None:
            raise KeyError(label_id)
        self.current_id = int(label_id)

    def rename(self, label_id: int, name: str) -> None:
        obj = self.get(label_id)
        if obj is None or obj.name == name:
            return
        self._push()
        self._put(replace(obj, name=str(name)))

    def delete(self, label_id: int) -> bool:
        obj = self.get(label_id)
        if obj is None:
            return False
        self._push()
        pos = self.ids.index(obj.id)
        self.objects = [o for o in self.objects if o.id != obj.id]
        if self.current_id == obj.id:
            rest = self.objects
            self.current_id = rest[min(pos, len(rest) - 1)].id if rest else None
        return True

    def click(self, structures, point, mode: str, level: Optional[int],
              connected: bool = False) -> CutObject:
        """Write the structure under ``point`` at ``level`` into the current object (made
        first when there is none): ``replace`` it, ``add`` to it or ``remove`` from it;
        ``connected``: only the part of the cluster connected to the click."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}.")
        self._push()
        obj = self.current or self._new()
        c = Click(mode, tuple(int(v) for v in point), None if level is None else int(level),
                  bool(connected))
        if mode == "replace" or obj.mask is None:
            clicks = (c,)
            mask = self._apply(np.zeros(self.shape, bool), structures, c, fresh=True)
        else:
            clicks = obj.clicks + (c,)
            mask = self._apply(obj.mask.copy(), structures, c)
        obj = replace(obj, clicks=clicks, mask=mask)
        self._put(obj)
        return obj

    def _apply(self, mask: np.ndarray, structures, c: Click, fresh: bool = False) -> np.ndarray:
        s = structures.structure(c.point, c.level, c.connected)
        mode = "add" if fresh and c.mode == "replace" else c.mode
        target = mask[c.point[0]] if self.per_slice else mask
        if mode == "replace":
            if self.per_slice:
                mask[:] = False
                target = mask[c.point[0]]
            target[...] = s
        elif mode == "add":
            target |= s
        elif mode == "remove" and not fresh:
            target &= ~s
        return mask

    def rebuild(self, structures, clicks: Sequence[Click]) -> np.ndarray:
        """The mask made by ``clicks`` in order (the first one starts from empty)."""
        mask = np.zeros(self.shape, bool)
        for k, c in enumerate(clicks):
            if k == 0 or c.mode == "replace":
                mask[:] = False
                mask = self._apply(mask, structures, c, fresh=True)
            else:
                mask = self._apply(mask, structures, c)
        return mask

    def step(self, structures, step: int, label_id: Optional[int] = None) -> bool:
        """Grow (+1) or shrink (-1) every clicked structure of the object (the current
        one by default) along its own lineage. False (no undo step) when none moves."""
        obj = self.get(self.current_id if label_id is None else label_id)
        if obj is None or not obj.clicks:
            return False
        clicks = tuple(replace(c, level=structures.step_level(c.point, c.level, step, c.connected))
                       for c in obj.clicks)
        if clicks == obj.clicks:
            return False
        self._push()
        self._put(replace(obj, clicks=clicks, mask=self.rebuild(structures, clicks)))
        return True

    def relevel(self, structures, level: Optional[int], label_id: Optional[int] = None,
                record: bool = False) -> bool:
        """Every click of the object at ``level`` ("mask follows slider"); an undo step
        only with ``record``."""
        obj = self.get(self.current_id if label_id is None else label_id)
        if obj is None or not obj.clicks:
            return False
        clicks = tuple(replace(c, level=None if level is None else int(level))
                       for c in obj.clicks)
        if clicks == obj.clicks:
            return False
        if record:
            self._push()
        self._put(replace(obj, clicks=clicks, mask=self.rebuild(structures, clicks)))
        return True

    # ----------------------------------------------------------- output
    def label_dtype(self):
        return np.uint8 if self.next_id() - 1 <= 255 else np.uint16 \
            if self.next_id() - 1 <= 65535 else np.uint32

    def labels(self, out: Optional[np.ndarray] = None) -> np.ndarray:
        """One label map: each object's id over its mask, later objects on top."""
        if out is None or out.shape != self.shape:
            out = np.zeros(self.shape, self.label_dtype())
        else:
            out[...] = 0
        for o in self.objects:
            if o.mask is not None:
                out[o.mask] = o.id
        return out

    def to_json(self) -> list[dict]:
        return [o.to_json() for o in self.objects]

    def load(self, records: Sequence[dict], masks: Optional[dict] = None, structures=None,
             current_id: Optional[int] = None) -> None:
        """Replace the objects by ``records`` (from :meth:`to_json`); masks from ``masks``
        ({id: bool array}), else rebuilt from the clicks with ``structures``. Clears the
        history."""
        objs = []
        for r in records:
            i = int(r["id"])
            clicks = tuple(Click.from_json(c) for c in r.get("clicks", ()))
            mask = None if masks is None else masks.get(i)
            if mask is not None:
                mask = np.asarray(mask, bool).reshape(self.shape)
            elif clicks and structures is not None:
                mask = self.rebuild(structures, clicks)
            colour = tuple(float(v) for v in r.get("colour") or colour_of(i))
            objs.append(CutObject(i, str(r.get("name") or f"Object {i}"), colour, clicks, mask))
        self.objects = objs
        ids = [o.id for o in objs]
        self.current_id = current_id if current_id in ids else (ids[-1] if ids else None)
        self._undo.clear()
        self._redo.clear()

    def centre_slice(self) -> Optional[int]:
        """The middle axial slice of the current object's mask (3D cut-away), or None."""
        obj = self.current
        if obj is None or obj.mask is None or obj.mask.ndim != 3:
            return None
        zs = np.nonzero(obj.mask.any(axis=(1, 2)))[0]
        return int((zs[0] + zs[-1]) // 2) if len(zs) else None
