"""Sessions in the CUTS dock widget: "Save session", and picking up a session's layers.

:meth:`Sessions.save` writes a session folder through :mod:`napari_cuts.session` (the
hierarchy, the encoder, the objects with their prompts and levels, their scribbles,
their masks, the labels, ``prompts.npz`` for the solver, the source path with its size
and hash, the geometry). The plugin's reader opens such a
folder (or a ``napari-cuts segment`` output folder) as the image, a "CUTS levels"
layer whose metadata says where the hierarchy is (:data:`LEVELS_KEY`) and a "CUTS
labels" layer with the objects in its metadata (:data:`OBJECTS_KEY`).
:meth:`Sessions.scan` (run when the widget is made and whenever a layer is added)
finds such a levels layer and adopts it: the hierarchy is loaded (shared with the
reader through :func:`napari_cuts.session.load_hierarchy`), the image layer chosen, and
slider, grow/shrink and the object list work at once, without training or condensing.
The objects come back with their prompts and their stored masks (identical to what
the prompts solve to in the session folder; an object saved without its mask is solved
again), and new prompts are solved in the session folder itself (a folder written
before prompts gets a working folder, :meth:`~._widget.clicks.Objects.use_folder`).
The encoder weights are loaded only when something needs them (Segment, Save weights).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import CutsError

log = logging.getLogger(__name__)

#: Metadata key of a levels layer read from a session (folder, hierarchy path, level).
LEVELS_KEY = "napari_cuts_levels"
#: Metadata key of a labels layer read from a session (objects, current id, folder).
OBJECTS_KEY = "napari_cuts_objects"


def _jsonable_metadata(md: dict) -> dict:
    """The parts of a layer's metadata that a session keeps (its geometry and source)."""
    keep = {}
    for k, v in (md or {}).items():
        if k in (LEVELS_KEY, OBJECTS_KEY, "napari_cuts"):
            continue
        if isinstance(v, (str, int, float, bool, type(None), list, tuple, dict)):
            keep[k] = v
    return keep


class Sessions:
    """Save and adopt sessions: the results and objects of ``state``, the layers of
    ``viewer``.

    Services: ``notify(level, text)``, ``status(text)``, the ``objects`` part (its
    labels layer, working folders, prompt file), and the panel's steps a session adoption
    takes: ``use_layers(names)`` (choose the input), ``reset_results(source)`` (clear the
    old results), ``adopt_results(result, display, level, levels_layer, persistent)`` and
    ``load_weights(path)``."""

    def __init__(self, state, viewer, *, notify, status, objects, use_layers, reset_results,
                 adopt_results, load_weights) -> None:
        self.state = state
        self.viewer = viewer
        self.notify = notify
        self.status = status
        self.objects = objects
        self.use_layers = use_layers
        self.reset_results = reset_results
        self.adopt_results = adopt_results
        self.load_weights = load_weights
        self.folder: Optional[Path] = None          # the session the results came from
        self.hierarchy_file: Optional[Path] = None  # its hierarchy.npz (copied on save)
        self.encoder_path: Optional[Path] = None    # weights not loaded yet
        self._adopted: list = []

    # ------------------------------------------------------------------ save
    def save(self, folder) -> Optional[Path]:
        """Write the session to ``folder``; None after a notification on failure."""
        from .. import session as core

        st, notify = self.state, self.notify
        if not st.results or st.source is None:
            notify("error", "Nothing to save: segment an image (or open a session) first.")
            return None
        if st.source.volume and not st.source.one_volume:
            notify("error", "Sessions hold one hierarchy: a stack of colour images "
                               "segmented image by image cannot be saved as a session yet.")
            return None
        from .inputs import layer_sources

        lay = st.source.layer
        md = dict(lay.metadata or {})
        src = md.get("source")
        several = len(st.source.layers) > 1
        channels = layer_sources(st.source.layers) if several else None
        no_file = [c["name"] for c in channels or [] if c["path"] is None]
        model = st.objects
        masks = {o.id: o.mask for o in model.objects if o.mask is not None} if model else {}
        labels = model.labels() if model is not None and model.objects else None
        scribbles = model.scribbles() if model is not None else {}
        prompt_file = self.objects.prompt_file()
        geometry = {"scale": [float(v) for v in lay.scale],
                    "translate": [float(v) for v in lay.translate],
                    "affine": np.asarray(lay.affine.affine_matrix, float).tolist(),
                    "metadata": _jsonable_metadata(md)}
        data = lay.data[0] if getattr(lay, "multiscale", False) else lay.data
        try:
            out = core.write_session(
                folder, hierarchy=st.results[0].hierarchy,
                objects=model.to_json() if model is not None else [], labels=labels,
                masks=masks, encoder=st.encoder if st.encoder is not None else self.encoder_path,
                source_path=src if src and Path(str(src)).exists() else None,
                source_shape=tuple(data.shape), geometry=geometry,
                level=st.click_level, persistent=bool(st.persistent),
                current=None if model is None else model.current_id,
                hierarchy_file=self.hierarchy_file, kind=st.source.kind,
                source_paths=[c["path"] for c in channels or [] if c["path"]],
                channels=channels, scribbles=scribbles, prompt_file=prompt_file)
        except CutsError as exc:
            notify("error", str(exc))
            return None
        if no_file and src and Path(str(src)).exists():
            notify("warning", f"Session saved to {out}, but layer(s) "
                                 f"{', '.join(repr(n) for n in no_file)} were not read from a "
                                 "file: open them before the session folder.")
        elif not (src and Path(str(src)).exists()):
            notify("warning", f"Session saved to {out}, but layer '{lay.name}' was not read "
                                 "from a file: open the image first, then the session folder.")
        else:
            notify("info", f"Session saved to {out}")
        self.folder = Path(out)
        self.hierarchy_file = Path(out) / core.HIERARCHY
        return Path(out)

    # ----------------------------------------------------------------- adopt
    def scan(self) -> bool:
        """Adopt a session's levels layer (and its labels layer) found in the viewer."""
        done = False
        for lay in list(self.viewer.layers):
            md = getattr(lay, "metadata", None) or {}
            if LEVELS_KEY in md and not any(lay is a for a in self._adopted) \
                    and lay is not self.state.levels_layer:
                done = self.adopt(lay) or done
            elif OBJECTS_KEY in md and not any(lay is a for a in self._adopted) \
                    and self.folder is not None \
                    and Path(md[OBJECTS_KEY].get("folder", "")) == self.folder \
                    and self.state.objects is not None:
                self._adopt_labels(lay)
                done = True
        return done

    def _image_for(self, hier, info: dict):
        from napari.layers import Image

        want = tuple(hier.shape)
        cands = []
        for lay in self.viewer.layers:
            if not isinstance(lay, Image):
                continue
            data = lay.data[0] if getattr(lay, "multiscale", False) else lay.data
            spatial = tuple(data.shape[:-1]) if getattr(lay, "rgb", False) else tuple(data.shape)
            if spatial == want:
                cands.append(lay)
        src = info.get("source")
        same = [c for c in cands if src and (c.metadata or {}).get("source") == src]
        return (same or cands or [None])[0]

    def adopt(self, levels_layer) -> bool:
        """Take a session's levels layer: its hierarchy, image, level and objects."""
        from .. import session as core
        from ..pipeline import SegmentResult
        from .model import LevelsDisplay
        from .inputs import source_from_layers
        from .settings import default_level

        notify = self.notify
        info = dict(levels_layer.metadata.get(LEVELS_KEY) or {})
        self._adopted.append(levels_layer)
        try:
            hier = core.load_hierarchy(info["hierarchy"])
        except (CutsError, KeyError) as exc:
            notify("error", f"napari-cuts: cannot use layer '{levels_layer.name}': {exc}")
            return False
        image = self._image_for(hier, info)
        if image is None:
            notify("error", f"napari-cuts: the session {info.get('folder')} needs its image "
                               f"({info.get('source') or 'the image it was made on'}, "
                               f"{' x '.join(map(str, hier.shape))}): open the image first "
                               "(File > Open), then the session folder.")
            return False
        try:
            layers = [image] + self._other_channels(image, info)
            self.use_layers([lay.name for lay in layers])
            src = source_from_layers(layers)
        except CutsError as exc:
            notify("error", f"napari-cuts: cannot use the session "
                               f"{info.get('folder') or ''}: {exc}")
            return False
        if len(hier.shape) == 3 and not src.one_volume:
            notify("error", f"the session's hierarchy is 3D but layer '{image.name}' is not "
                               "a grey volume.")
            return False
        self.reset_results(src)
        self.folder = Path(info["folder"]) if info.get("folder") else None
        self.hierarchy_file = Path(info["hierarchy"])
        self.encoder_path = Path(info["encoder"]) if info.get("encoder") else None
        res = SegmentResult(hier, None, 1, [], {})
        level = info.get("level")
        if level is None:
            level = default_level(np.asarray(hier.n_clusters))
        level = int(np.clip(int(level), 0, hier.n_levels - 1))
        display = LevelsDisplay.from_hierarchy(hier) if src.one_volume else None
        self.adopt_results(res, display, level, levels_layer, bool(info.get("persistent")))
        self.objects.use_folder(Path(info["hierarchy"]).parent, hier)
        for lay in list(self.viewer.layers):
            md = getattr(lay, "metadata", None) or {}
            if OBJECTS_KEY in md and Path(md[OBJECTS_KEY].get("folder", "")) == self.folder:
                self._adopt_labels(lay)
                break
        self.status(f"Session {self.folder.name if self.folder else ''}: "
                    "levels and objects loaded, nothing recomputed.")
        return True

    def _other_channels(self, image, info: dict) -> list:
        """The layers of the other channels of a session made from several layers
        (co-registered sequences), opened from their files when they are not open yet.
        [] for a session of one layer."""
        from .. import session as core

        folder = info.get("folder")
        if not folder:
            return []
        try:
            sess = core.read_session(folder)
        except CutsError:
            return []
        source = sess.source
        channels = source.get("channels")
        if not channels and sess.kind == "session":
            return []                  # saved from one layer
        if not channels:
            # a `napari-cuts segment T1 T2` folder: every layer of each file, in order
            files = [r.get("path") for r in source.get("sequences") or [] if r.get("path")]
            channels = []
            for f in files:
                channels.append({"path": f, "sequence_index": None, "all": True})
            if not channels:
                md = image.metadata or {}
                if md.get("sequence_index") is None:
                    return []
                channels = [{"path": md.get("source"), "sequence_index": None, "all": True}]
        out = []
        for ch in channels:
            for lay in self._channel_layers(ch):
                if lay is not image and not any(lay is o for o in out):
                    out.append(lay)
        return out

    def _channel_layers(self, ch: dict) -> list:
        """The open image layer(s) of one recorded channel, opened from its file when
        none is open."""
        from napari.layers import Image

        viewer = self.viewer
        path, idx, every = ch.get("path"), ch.get("sequence_index"), bool(ch.get("all"))

        def same(lay) -> bool:
            md = lay.metadata or {}
            src = md.get("source")
            if not path or not src:
                return lay.name == ch.get("name")
            try:
                if Path(str(src)).expanduser().resolve() != Path(str(path)).resolve():
                    return False
            except OSError:
                return False
            return every or idx is None or md.get("sequence_index") == idx

        found = [lay for lay in viewer.layers if isinstance(lay, Image) and same(lay)]
        if not found and path and Path(str(path)).exists():
            from .. import io
            from .._reader import image_layers

            for image in io.read_all(path):
                for data, kw, kind in image_layers(image):
                    md = kw.get("metadata") or {}
                    if kind != "image" or not (every or idx is None
                                               or md.get("sequence_index") == idx):
                        continue
                    found.append(viewer.add_image(data, **kw))
        found.sort(key=lambda lay: (lay.metadata or {}).get("sequence_index") or 0)
        if not found:
            from ..errors import InputError

            raise InputError(f"its channel {ch.get('name') or path!r} is not open and its file "
                             f"{path or '(none recorded)'} cannot be read: open it, then the "
                             "session folder.")
        return found if every else found[:1]

    def _adopt_labels(self, layer) -> None:
        from .. import session as core

        self._adopted.append(layer)
        rec = dict(layer.metadata.get(OBJECTS_KEY) or {})
        model = self.state.objects
        masks, scribbles = None, {}
        if self.folder is not None:
            try:
                sess = core.read_session(self.folder)
                scribbles = sess.scribbles(model.shape)
                if (self.folder / core.MASKS).is_file():
                    masks = sess.masks(model.shape)
            except CutsError as exc:
                self.notify("warning", f"{exc} The objects are solved again from their prompts.")
        model.load(rec.get("objects") or [], masks, scribbles, rec.get("current"))
        self.objects.adopt_labels_layer(layer)
        self.objects.loaded()

    def resolve_encoder(self):
        """Load the session's encoder weights now (None if there are none)."""
        st = self.state
        if st.encoder is None and self.encoder_path is not None:
            path, self.encoder_path = self.encoder_path, None
            if self.load_weights(path):
                return st.encoder
        return st.encoder
