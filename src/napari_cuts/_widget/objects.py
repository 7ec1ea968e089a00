"""Objects of a labelling session, in numpy only (no Qt, no napari): the widget's model.

An *object* (:class:`CutObject`) is one structure the user is labelling (the optic
disc, a lesion): a label id, a name, a colour, its **prompts** and its own mask, kept
whole (objects may overlap: a lesion inside an organ). An object is its prompts
(:class:`Prompts`): positive and negative points and scribbles (painted voxels, 1
object, 2 background). Its mask is what :func:`napari_cuts.prompts.segment_from_prompts`
gives for all of them at the object's ``level`` (the slider's level when the prompts
were solved; None: the tool's own level, as with the persistent view). Solving runs in
the widget (:mod:`.prompts`, off the GUI thread); the model records each object's
prompts, the level and whether its mask is the solution of those prompts
(``solved``), or the message of a solver error (``error``: the last mask stays).

:class:`ObjectSet` holds the objects, the current one, and an undo/redo history of
whole states. Objects are immutable (frozen dataclasses whose masks and scribbles are
never written in place), so a state is a tuple of references and a history step costs
no copy of a mask; undo and redo walk the prompts, restoring the masks that were
solved for them (an object whose solve a newer prompt superseded is solved again,
:meth:`ObjectSet.unsolved`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

#: Undo steps kept (the issue asks for at least 20).
MAX_HISTORY = 50

#: Object colours (RGBA, 0..1), by label id (id 1 the first): saturated colours that
#: read on a fundus and on grey MRI, each the colour of its object everywhere (the
#: object list's swatch, "CUTS labels", "CUTS mask"); while an object is edited the
#: levels layer is dimmed and drawn as outlines (:mod:`.clicks`), so the object stands
#: out whatever colours the levels have. None of them is the green or red of the
#: prompts (:data:`POSITIVE_COLOUR`, :data:`NEGATIVE_COLOUR`).
PALETTE = (
    (0.00, 0.45, 1.00, 1.0), (1.00, 0.85, 0.00, 1.0), (1.00, 0.50, 0.05, 1.0),
    (0.58, 0.40, 0.74, 1.0), (0.09, 0.75, 0.81, 1.0), (0.89, 0.47, 0.76, 1.0),
    (0.55, 0.34, 0.29, 1.0), (0.74, 0.74, 0.13, 1.0), (0.50, 0.50, 0.50, 1.0),
    (0.12, 0.47, 0.71, 1.0),
)
#: Colours of the prompts: positive points and object scribbles green, negative points
#: and background scribbles red.
POSITIVE_COLOUR = (0.10, 0.90, 0.20, 1.0)
NEGATIVE_COLOUR = (0.95, 0.10, 0.10, 1.0)


def colour_of(label_id: int) -> tuple:
    return PALETTE[(int(label_id) - 1) % len(PALETTE)]


def _point(p) -> tuple:
    return tuple(int(round(float(v))) for v in p)


@dataclass(frozen=True)
class Prompts:
    """The prompts of one object. ``positive`` / ``negative``: index tuples (one index
    per axis of the result layers) in the order they were given; ``scribble_index`` /
    ``scribble_value``: the painted voxels (flat indices, sorted) and their values (1
    object, 2 background), kept sparse so that a history of strokes costs little;
    ``strokes``: how many strokes painted them. Never changed in place."""

    positive: tuple = ()
    negative: tuple = ()
    scribble_index: Optional[np.ndarray] = field(default=None, compare=False, repr=False)
    scribble_value: Optional[np.ndarray] = field(default=None, compare=False, repr=False)
    strokes: int = 0

    # ------------------------------------------------------------ reading
    @property
    def has_scribbles(self) -> bool:
        return self.scribble_index is not None and len(self.scribble_index) > 0

    @property
    def count(self) -> int:
        """Points and strokes: what the object list shows."""
        return len(self.positive) + len(self.negative) + (self.strokes if self.has_scribbles else 0)

    @property
    def empty(self) -> bool:
        return not self.positive and not self.negative and not self.has_scribbles

    def text(self) -> str:
        """``"3: 2+ 1-"``, with ``", 2 strokes"`` when painted; ``""`` when empty."""
        if self.empty:
            return ""
        s = f"{self.count}: {len(self.positive)}+ {len(self.negative)}-"
        if self.has_scribbles:
            s += f", {self.strokes} stroke{'s' if self.strokes != 1 else ''}"
        return s

    def scribbles(self, shape) -> Optional[np.ndarray]:
        """The scribbles as a dense uint8 array of ``shape`` (0 none, 1 object, 2
        background), or None when nothing is painted."""
        if not self.has_scribbles:
            return None
        out = np.zeros(tuple(shape), np.uint8)
        out.ravel()[self.scribble_index] = self.scribble_value
        return out

    def same(self, other: "Prompts") -> bool:
        """The same prompts (points in the same order, the same painted voxels)."""
        if (self.positive, self.negative) != (other.positive, other.negative):
            return False
        if self.has_scribbles != other.has_scribbles:
            return False
        return not self.has_scribbles or (
            np.array_equal(self.scribble_index, other.scribble_index)
            and np.array_equal(self.scribble_value, other.scribble_value))

    # ----------------------------------------------------------- changing
    def add(self, point, positive: bool) -> "Prompts":
        """With one more point. A point already given with the other sign changes sign
        (alt-click a positive point to make it negative); one already given with the
        same sign changes nothing (``self`` is returned)."""
        p = _point(point)
        own, other = (self.positive, self.negative) if positive else (self.negative, self.positive)
        if p in own and p not in other:
            return self
        own = tuple(q for q in own if q != p) + (p,)
        other = tuple(q for q in other if q != p)
        pos, neg = (own, other) if positive else (other, own)
        return replace(self, positive=pos, negative=neg)

    def with_points(self, positive: Sequence, negative: Sequence) -> "Prompts":
        return replace(self, positive=tuple(_point(p) for p in positive),
                       negative=tuple(_point(p) for p in negative))

    def with_scribbles(self, dense: Optional[np.ndarray], stroke: bool = True) -> "Prompts":
        """With the painted voxels of ``dense`` (0 none, 1 object, 2 background);
        ``stroke``: one more stroke painted them."""
        if dense is None or not np.any(dense):
            return replace(self, scribble_index=None, scribble_value=None, strokes=0)
        flat = np.asarray(dense).ravel()
        idx = np.flatnonzero(flat)
        return replace(self, scribble_index=idx.astype(np.int64),
                       scribble_value=flat[idx].astype(np.uint8),
                       strokes=self.strokes + (1 if stroke else 0))

    # ------------------------------------------------------------- record
    def to_json(self) -> dict:
        return {"positive": [[int(v) for v in p] for p in self.positive],
                "negative": [[int(v) for v in p] for p in self.negative],
                "strokes": int(self.strokes if self.has_scribbles else 0)}

    @classmethod
    def from_json(cls, d: Optional[dict], scribbles: Optional[np.ndarray] = None) -> "Prompts":
        d = d or {}
        p = cls().with_points(d.get("positive") or (), d.get("negative") or ())
        if scribbles is not None and np.any(scribbles):
            p = p.with_scribbles(scribbles, stroke=False)
            p = replace(p, strokes=max(1, int(d.get("strokes") or 1)))
        return p

    @classmethod
    def from_clicks(cls, clicks: Sequence[dict]) -> "Prompts":
        """Prompts from the clicks of a session saved before objects were prompts
        (``{"mode": "replace" | "add" | "remove", "point"}``): a replace starts over,
        add is positive, remove negative."""
        p = cls()
        for c in clicks or ():
            mode = str(c.get("mode", "add"))
            if mode == "replace":
                p = cls()
            p = p.add(c["point"], mode != "remove")
        return p


@dataclass(frozen=True)
class CutObject:
    """One object: ``id`` (the label value, >= 1), ``name``, ``colour`` (RGBA 0..1),
    ``prompts``, ``level`` (the hierarchy level its prompts are solved at; None: the
    tool's own), ``mask`` (bool, the result layers' shape; None while it has none),
    ``solved`` (the mask is the answer to these prompts at this level) and ``error``
    (the solver's message when these prompts could not be solved; the mask is the last
    one). Never written in place: a change makes a new object."""

    id: int
    name: str
    colour: tuple
    prompts: Prompts = field(default_factory=Prompts)
    level: Optional[int] = None
    mask: Optional[np.ndarray] = field(default=None, compare=False, repr=False)
    solved: bool = True
    error: Optional[str] = None

    @property
    def clicks(self) -> tuple:
        """Its points as ``("positive" | "negative", point)`` pairs."""
        return (tuple(("positive", p) for p in self.prompts.positive)
                + tuple(("negative", p) for p in self.prompts.negative))

    def level_text(self) -> str:
        """The object's level as the list shows it: "12", "auto" (the tool's own level)
        or "" before a prompt."""
        if self.prompts.empty:
            return ""
        return "auto" if self.level is None else str(self.level)

    def pixels(self) -> int:
        return 0 if self.mask is None else int(np.count_nonzero(self.mask))

    def to_json(self) -> dict:
        return {"id": int(self.id), "name": self.name,
                "colour": [round(float(c), 4) for c in self.colour],
                "prompts": self.prompts.to_json(),
                "level": None if self.level is None else int(self.level),
                "pixels": self.pixels()}


def measure(mask: Optional[np.ndarray], scale, volume: bool) -> dict:
    """``pixels`` and ``mm2`` (2D) or ``ml`` (3D) of ``mask`` from ``scale`` (mm/voxel)."""
    n = 0 if mask is None else int(np.count_nonzero(mask))
    sc = np.asarray(scale, float)
    if volume:
        return {"pixels": n, "ml": n * float(np.prod(sc[-3:])) / 1000.0}
    return {"pixels": n, "mm2": n * float(np.prod(sc[-2:]))}


class ObjectSet:
    """The objects of a session, the current one, and an undo/redo history.

    ``shape``: the result layers' shape, ``(H, W)`` or ``(Z, Y, X)``; ``per_slice``:
    points are ``(z, y, x)`` into a stack whose slices have their own hierarchies.
    Every change (new object, a change of the prompts, a level stepped, rename, delete)
    is one undo step; a solved mask arriving is not.
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
        """Go back one change (prompts, masks and object list together); False if none."""
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

    def unsolved(self) -> list[CutObject]:
        """Objects whose mask is not (yet) the answer to their prompts and level, and
        whose prompts did not give a solver error."""
        return [o for o in self.objects if not o.solved and o.error is None]

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
        """Make object ``label_id`` current (prompts go into it); not an undo step."""
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

    def set_prompts(self, prompts: Prompts, level: Optional[int],
                    label_id: Optional[int] = None, record: bool = True) -> CutObject:
        """Give the object (the current one by default, made first when there is none)
        new prompts solved at ``level``: one undo step (``record``). Its mask stays
        until :meth:`set_mask` brings the answer; no prompt at all empties it at once."""
        if record:
            self._push()
        obj = self.get(self.current_id if label_id is None else label_id)
        if obj is None:
            obj = self._new()
        lv = None if level is None else int(level)
        if prompts.empty:
            obj = replace(obj, prompts=prompts, level=lv, mask=None, solved=True, error=None)
        else:
            obj = replace(obj, prompts=prompts, level=lv, solved=False, error=None)
        self._put(obj)
        return obj

    def set_mask(self, label_id: int, prompts: Prompts, level: Optional[int],
                 mask: np.ndarray) -> bool:
        """The solver's ``mask`` for ``prompts`` at ``level``: kept when the object still
        has exactly these prompts (the same object, not a newer one) and level; not an
        undo step. False when the answer is stale."""
        obj = self.get(label_id)
        if obj is None or obj.prompts is not prompts or obj.level != level:
            return False
        mask = np.asarray(mask, bool).reshape(self.shape)
        self._put(replace(obj, mask=mask, solved=True, error=None))
        return True

    def set_error(self, label_id: int, prompts: Prompts, level: Optional[int],
                  message: str) -> bool:
        """These prompts could not be solved: the object keeps its mask and ``message``."""
        obj = self.get(label_id)
        if obj is None or obj.prompts is not prompts or obj.level != level:
            return False
        self._put(replace(obj, error=str(message)))
        return True

    def relevel(self, level: Optional[int], label_id: Optional[int] = None,
                record: bool = False) -> Optional[CutObject]:
        """The object's prompts at another ``level`` (the slider moved with "mask follows
        slider", or grow / shrink); an undo step only with ``record``. None when the
        object has no prompt or is at that level already."""
        obj = self.get(self.current_id if label_id is None else label_id)
        lv = None if level is None else int(level)
        if obj is None or obj.prompts.empty or obj.level == lv:
            return None
        if record:
            self._push()
        obj = replace(obj, level=lv, solved=False, error=None)
        self._put(obj)
        return obj

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

    def scribbles(self) -> dict:
        """``{id: dense uint8 scribbles}`` of the objects that have painted voxels."""
        return {o.id: o.prompts.scribbles(self.shape) for o in self.objects
                if o.prompts.has_scribbles}

    def load(self, records: Sequence[dict], masks: Optional[dict] = None,
             scribbles: Optional[dict] = None, current_id: Optional[int] = None) -> None:
        """Replace the objects by ``records`` (from :meth:`to_json`; records of sessions
        saved before objects were prompts give their clicks as points), with masks from
        ``masks`` ({id: bool array}) and painted voxels from ``scribbles`` ({id: uint8
        array}). An object with prompts and no stored mask is left unsolved
        (:meth:`unsolved`). Clears the history."""
        objs = []
        for r in records:
            i = int(r["id"])
            scr = None if scribbles is None else scribbles.get(i)
            if scr is not None:
                scr = np.asarray(scr).reshape(self.shape)
            if "prompts" in r:
                prompts = Prompts.from_json(r.get("prompts"), scr)
                lv = r.get("level")
            else:
                clicks = list(r.get("clicks") or ())
                prompts = Prompts.from_clicks(clicks)
                lvs = [c.get("level") for c in clicks if c.get("level") is not None]
                lv = lvs[-1] if lvs else None
            mask = None if masks is None else masks.get(i)
            if mask is not None:
                mask = np.asarray(mask, bool).reshape(self.shape)
            solved = prompts.empty or mask is not None
            colour = tuple(float(v) for v in r.get("colour") or colour_of(i))
            objs.append(CutObject(i, str(r.get("name") or f"Object {i}"), colour, prompts,
                                  None if lv is None else int(lv),
                                  mask if not prompts.empty else None, solved))
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
