"""Labelling sessions on disk: write and read a session folder (no Qt, no napari).

A session folder (written by the widget's "Save session") holds:

- ``hierarchy.npz``: the hierarchy (:meth:`napari_cuts.hierarchy.Hierarchy.save`);
- ``encoder.pt``: the encoder weights, when there is an encoder;
- ``objects.json``: ``{"objects": [{"id", "name", "colour", "prompts": {"positive":
  [[z, y, x] ...], "negative": [...], "strokes"}, "level", "pixels"}], "current": id}``:
  each object is its prompts (points as indices of the hierarchy's grid, ``level`` the
  one they are solved at, None for the tool's own); sessions saved before objects were
  prompts have ``"clicks": [{"mode", "point", "level"}]`` instead, read as points;
- ``scribbles.npz``: each object's painted prompts (``scribbles_<id>``, uint8 0 none, 1
  object, 2 background, the hierarchy's grid, compressed), for objects that have some;
- ``prompts.npz``: the image on the hierarchy's grid and its spacing
  (:func:`napari_cuts.prompts.save_prompt_data`), so that
  :func:`napari_cuts.prompts.segment_from_prompts` solves the objects' prompts from the
  session folder alone and reopens them to the same masks;
- ``labels.npy``: the label map (each object's id, later objects on top) and
  ``masks.npz``: each object's own whole mask (``mask_<id>``, bit-packed), since
  objects may overlap;
- ``session.json``: ``{"format": "napari-cuts session", "version", "source": {"path",
  "size", "sha256", "shape"}, "geometry": {"scale", "translate", "affine",
  "metadata"}, "level", "persistent", "kind"}``. A session made from several files
  (co-registered sequences chosen together) also has ``source["sequences"]``: the
  ``{"path", "size", "sha256"}`` of every file, the first one included (as the
  ``run.json`` of ``napari-cuts segment T1 T2``), and ``source["channels"]``: one
  ``{"name", "path", "sequence_index"}`` per channel (layer), in channel order.

The output folder of ``napari-cuts segment`` (``hierarchy.npz`` and ``run.json`` with
``input`` and ``shape``) opens the same way, without objects: :func:`read_session`
takes both. :meth:`Session.check_source` says whether the source image (every source
file, for several sequences) is where the session expects it and unchanged (size and
content hash), and if not, a message that names the missing or changed file and what
to do.

:func:`load_hierarchy` keeps the last hierarchies read (by path, size and mtime), so
the reader and the widget docked on its layers share one object.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import ReadError, WriteError
from .fileutil import atomic_path, jsonable, make_output_dir, write_json

__all__ = ["Session", "write_session", "read_session", "is_session_folder", "file_digest",
           "load_hierarchy", "SESSION_FORMAT"]

SESSION_FORMAT = "napari-cuts session"
SESSION_VERSION = 1
HIERARCHY = "hierarchy.npz"
ENCODER = "encoder.pt"
OBJECTS = "objects.json"
LABELS = "labels.npy"
MASKS = "masks.npz"
SCRIBBLES = "scribbles.npz"
PROMPTS = "prompts.npz"
SESSION = "session.json"
RUN = "run.json"


# ------------------------------------------------------------------ source identity
def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def file_digest(path) -> dict:
    """``{"path", "size", "sha256"}`` of a file, or of every file of a folder (a DICOM
    series: names and contents, in name order)."""
    p = Path(path).expanduser().resolve()
    h = hashlib.sha256()
    size = 0
    for f in _files_of(p):
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
    return {"path": str(p), "size": int(size), "sha256": h.hexdigest()}


def _size_of(p: Path) -> int:
    return int(sum(f.stat().st_size for f in _files_of(p)))


# ----------------------------------------------------------------- hierarchy cache
_CACHE: dict = {}


def load_hierarchy(path):
    """:meth:`Hierarchy.load`, remembering the last two hierarchies read (keyed by path,
    size and modification time) so that a reader and a widget share one."""
    from .hierarchy import Hierarchy

    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        raise ReadError(f"{p} does not exist; the session folder lacks its hierarchy.npz.") \
            from None
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key in _CACHE:
        return _CACHE[key]
    hier = Hierarchy.load(p)
    _CACHE.clear() if len(_CACHE) >= 2 else None
    _CACHE[key] = hier
    return hier


def remember_hierarchy(path, hier) -> None:
    """Put ``hier`` (just written to ``path``) into the :func:`load_hierarchy` cache."""
    p = Path(path).resolve()
    st = p.stat()
    if len(_CACHE) >= 2:
        _CACHE.clear()
    _CACHE[(str(p), st.st_size, st.st_mtime_ns)] = hier


# ------------------------------------------------------------------------ session
@dataclass
class Session:
    """What a session folder (or a ``segment`` output folder) holds. Arrays are read
    on demand: :meth:`hierarchy`, :meth:`labels`, :meth:`masks`."""

    folder: Path
    kind: str                                  #: "session" or "segment"
    source: dict = field(default_factory=dict)  #: path, size, sha256 (session), shape
    geometry: dict = field(default_factory=dict)
    objects: list = field(default_factory=list)
    current: Optional[int] = None
    level: Optional[int] = None
    persistent: bool = False
    info: dict = field(default_factory=dict)

    @property
    def hierarchy_path(self) -> Path:
        return self.folder / HIERARCHY

    @property
    def encoder_path(self) -> Optional[Path]:
        p = self.folder / ENCODER
        if p.is_file():
            return p
        # a batch input folder: the cohort's one encoder, in the batch folder
        if not self.info.get("batch"):
            return None
        shared = Path(self.info.get("encoder") or self.folder.parent / ENCODER)
        if not shared.is_file():
            shared = self.folder.parent / ENCODER
        return shared if shared.is_file() else None

    def hierarchy(self):
        return load_hierarchy(self.hierarchy_path)

    def labels(self) -> Optional[np.ndarray]:
        p = self.folder / LABELS
        if not p.is_file():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ReadError(f"{p} cannot be read ({exc}); the session's labels are damaged.") \
                from None

    def masks(self, shape) -> Optional[dict]:
        """``{id: bool mask}`` of each object (None when the folder has none)."""
        p = self.folder / MASKS
        if not p.is_file():
            return None
        n = int(np.prod(shape))
        out = {}
        try:
            with np.load(p, allow_pickle=False) as z:
                for name in z.files:
                    if name.startswith("mask_"):
                        bits = np.unpackbits(z[name], count=n)
                        out[int(name[5:])] = bits.astype(bool).reshape(tuple(shape))
        except (OSError, ValueError, KeyError) as exc:
            raise ReadError(f"{p} cannot be read ({exc}); the session's masks are damaged.") \
                from None
        return out

    def scribbles(self, shape) -> dict:
        """``{id: uint8 scribbles}`` of the objects that have painted prompts ({} when
        the folder has none)."""
        p = self.folder / SCRIBBLES
        if not p.is_file():
            return {}
        out = {}
        try:
            with np.load(p, allow_pickle=False) as z:
                for name in z.files:
                    if name.startswith("scribbles_"):
                        out[int(name[10:])] = np.asarray(z[name], np.uint8).reshape(tuple(shape))
        except (OSError, ValueError, KeyError) as exc:
            raise ReadError(f"{p} cannot be read ({exc}); the session's scribbles are "
                            "damaged.") from None
        return out

    def source_path(self) -> Optional[Path]:
        s = self.source.get("path")
        if not s:
            return None
        p = Path(s).expanduser()
        if not p.is_absolute():
            # run.json of `segment` records the path as given: relative to where it ran,
            # tried from here and from the folder's parent
            for base in (Path.cwd(), self.folder.parent, self.folder):
                if (base / p).exists():
                    return (base / p).resolve()
            return (Path.cwd() / p)
        return p

    def source_files(self) -> list[dict]:
        """Every source file with what was recorded of it: ``{"path" (a Path), "size",
        "sha256"}``, the main source first, then the other sequences' files (a session
        made from several co-registered files). Empty when no path was recorded."""
        main = self.source_path()
        if main is None:
            return []
        out = [{"path": main, "size": self.source.get("size"),
                "sha256": self.source.get("sha256")}]
        seen = {str(main)}
        for rec in self.source.get("sequences") or []:
            if not isinstance(rec, dict) or not rec.get("path"):
                continue
            p = Path(str(rec["path"])).expanduser()
            if str(p) in seen:
                continue
            seen.add(str(p))
            out.append({"path": p, "size": rec.get("size"), "sha256": rec.get("sha256")})
        return out

    def check_source(self) -> tuple[str, str]:
        """``("ok", "")``, or ``("missing" | "changed" | "unknown", message)``: the
        message names the missing or changed file (any of the source files) and what to
        do."""
        files = self.source_files()
        if not files:
            return "unknown", (f"session {self.folder} does not say which image it was made "
                               "on. Open the image first (File > Open), then the session "
                               "folder.")
        n = len(files)
        for k, rec in enumerate(files):
            status, message = self._check_file(rec, "" if n == 1 else f" (file {k + 1} of {n})")
            if status != "ok":
                return status, message
        return "ok", ""

    def _check_file(self, rec: dict, which: str) -> tuple[str, str]:
        p, size, digest = rec["path"], rec.get("size"), rec.get("sha256")
        if not p.exists():
            return "missing", (
                f"session {self.folder}: its source image {p}{which} is missing"
                + (f" (expected {size} bytes)" if size else "")
                + ". Put the image back at that path, or open the image first (File > Open) "
                "and then the session folder; the levels and labels are not shown over "
                "another image.")
        if size is not None and _size_of(p) != int(size):
            return "changed", self._changed(p, which, f"{_size_of(p)} bytes, expected {size}")
        if digest:
            now = file_digest(p)["sha256"]
            if now != digest:
                return "changed", self._changed(p, which, "its content hash differs")
        return "ok", ""

    def _changed(self, p: Path, which: str, why: str) -> str:
        return (f"session {self.folder}: its source image {p}{which} has changed since the "
                f"session was saved ({why}). Open the original image first (File > Open), "
                "then the session folder, or segment the image again: the saved levels and "
                "labels would not match it.")


def is_session_folder(path) -> bool:
    """True for a session folder or a ``segment`` output folder (a hierarchy.npz beside a
    session.json or run.json). Never raises."""
    try:
        p = Path(path)
        return p.is_dir() and (p / HIERARCHY).is_file() and (
            (p / SESSION).is_file() or (p / RUN).is_file())
    except Exception:  # noqa: BLE001 - a yes/no question never raises
        return False


def _read_json(p: Path) -> dict:
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReadError(f"{p} cannot be read as JSON ({exc}); the session folder is damaged.") \
            from None
    if not isinstance(d, dict):
        raise ReadError(f"{p} is not a JSON object; the session folder is damaged.")
    return d


def read_session(folder) -> Session:
    """Read a session folder's description (not its arrays). Raises :class:`ReadError`
    naming the file for a folder that is neither a session nor a ``segment`` output."""
    f = Path(folder).expanduser().resolve()
    if not is_session_folder(f):
        raise ReadError(f"{f} is not a napari-cuts session: it needs hierarchy.npz beside "
                        "session.json (Save session) or run.json (napari-cuts segment).")
    if (f / SESSION).is_file():
        d = _read_json(f / SESSION)
        if d.get("format") != SESSION_FORMAT:
            raise ReadError(f"{f / SESSION} is not a napari-cuts session file.")
        objs: dict = {}
        if (f / OBJECTS).is_file():
            objs = _read_json(f / OBJECTS)
        lv = d.get("level")
        return Session(f, "session", dict(d.get("source") or {}), dict(d.get("geometry") or {}),
                       list(objs.get("objects") or []), objs.get("current"),
                       None if lv is None else int(lv), bool(d.get("persistent", False)), d)
    run = _read_json(f / RUN)
    src = {"path": run.get("input"), "shape": run.get("shape")}
    if run.get("source"):
        src.update(run["source"])
    return Session(f, "segment", src, dict(run.get("geometry") or {}), [], None, None, False,
                   run)


def _encoder_to(encoder, path: Path) -> None:
    if encoder is None:
        return
    if isinstance(encoder, (str, os.PathLike)):
        if Path(encoder).resolve() != path.resolve():
            with atomic_path(path) as tmp:
                shutil.copyfile(encoder, tmp)
        return
    encoder.save(path)


def write_session(folder, *, hierarchy, objects: list, labels: Optional[np.ndarray] = None,
                  masks: Optional[dict] = None, encoder=None, source_path=None,
                  source_shape=None, geometry: Optional[dict] = None,
                  level: Optional[int] = None, persistent: bool = False,
                  current: Optional[int] = None, hierarchy_file=None,
                  kind: str = "image", source_paths=None,
                  channels: Optional[list] = None, scribbles: Optional[dict] = None,
                  prompt_file=None) -> Path:
    """Write a session folder (see the module docstring) and return its path.

    ``hierarchy``: a :class:`Hierarchy` (written with :meth:`~Hierarchy.save`, or copied
    from ``hierarchy_file`` when that file holds it: no dense rewrite of a volume);
    ``objects``: records of :meth:`ObjectSet.to_json`; ``masks``: ``{id: bool array}``;
    ``encoder``: an :class:`Encoder` or the path of its weights; ``source_path``: the
    image file (or DICOM folder) it was made on, recorded with its size and sha256;
    ``source_paths``: every file of an input made of several co-registered files (the
    first is ``source_path``), each recorded the same way in ``source["sequences"]``;
    ``channels``: ``[{"name", "path", "sequence_index"}]`` per channel; ``scribbles``:
    ``{id: uint8 array}`` of painted prompts; ``prompt_file``: a ``prompts.npz`` for this
    hierarchy (copied in). Raises :class:`WriteError` naming what could not be written.
    """
    out = make_output_dir(folder)
    hpath = out / HIERARCHY
    same = hierarchy_file is not None and Path(hierarchy_file).is_file() \
        and Path(hierarchy_file).resolve() == hpath.resolve()
    if hierarchy_file is not None and Path(hierarchy_file).is_file():
        if not same:
            with atomic_path(hpath) as tmp:
                shutil.copyfile(hierarchy_file, tmp)
    else:
        hierarchy.save(hpath)
    if not same and prompt_file is None and (out / PROMPTS).exists():
        (out / PROMPTS).unlink()               # it was made for another hierarchy
    remember_hierarchy(hpath, hierarchy)
    _encoder_to(encoder, out / ENCODER)
    if labels is not None:
        with atomic_path(out / LABELS) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(labels))
    if masks:
        with atomic_path(out / MASKS) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **{f"mask_{int(i)}": np.packbits(np.asarray(m, bool))
                                           for i, m in masks.items() if m is not None})
    elif (out / MASKS).exists():
        (out / MASKS).unlink()
    scribbles = {int(i): a for i, a in (scribbles or {}).items() if a is not None}
    if scribbles:
        with atomic_path(out / SCRIBBLES) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **{f"scribbles_{i}": np.asarray(a, np.uint8)
                                           for i, a in scribbles.items()})
    elif (out / SCRIBBLES).exists():
        (out / SCRIBBLES).unlink()
    if prompt_file is not None and Path(prompt_file).is_file() \
            and Path(prompt_file).resolve() != (out / PROMPTS).resolve():
        with atomic_path(out / PROMPTS) as tmp:
            shutil.copyfile(prompt_file, tmp)
    src: dict = {"shape": None if source_shape is None else [int(s) for s in source_shape]}
    if source_path:
        p = Path(source_path)
        try:
            src.update(file_digest(p))
        except OSError:
            src.update({"path": str(p.expanduser().resolve()), "size": None, "sha256": None})
    paths = []
    for sp in source_paths or []:
        if sp and str(Path(sp).expanduser().resolve()) not in paths:
            paths.append(str(Path(sp).expanduser().resolve()))
    if len(paths) > 1:
        recs = []
        for sp in paths:
            try:
                recs.append(file_digest(sp))
            except OSError:
                recs.append({"path": sp, "size": None, "sha256": None})
        src["sequences"] = recs
    if channels:
        src["channels"] = [dict(c) for c in channels]
    write_json(out / OBJECTS, {"objects": list(objects), "current": current})
    from . import __version__

    record = {"format": SESSION_FORMAT, "version": SESSION_VERSION,
              "napari_cuts_version": __version__, "kind": kind, "source": src,
              "geometry": json.loads(json.dumps(geometry or {}, default=jsonable)),
              "level": None if level is None else int(level), "persistent": bool(persistent),
              "hierarchy": HIERARCHY, "encoder": ENCODER if (out / ENCODER).is_file() else None,
              "shape": [int(s) for s in hierarchy.shape]}
    try:
        write_json(out / SESSION, record)
    except (TypeError, ValueError) as exc:
        raise WriteError(f"{out / SESSION}: the session cannot be saved as JSON ({exc}).") \
            from None
    return out
