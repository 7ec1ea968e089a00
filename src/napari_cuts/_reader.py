"""napari reader contribution: pictures (and folders of them), NIfTI, DICOM and DICOM
SEG through :mod:`napari_cuts.io`, and napari-cuts session folders (:func:`read_session_layers`).

``napari-cuts.get_reader`` in napari.yaml points at :func:`napari_get_reader`.
"""

from __future__ import annotations

import os
import warnings

from . import io


def _single_path(path):
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, os.PathLike)):
        return None
    return path


def napari_get_reader(path):
    """Return a reader function for a supported path (str, or a list of one), else None.

    Never raises: napari asks every plugin about every path.
    """
    p = _single_path(path)
    if p is None:
        return None
    from .session import is_session_folder

    if is_session_folder(p):
        return read_session_layers
    if not io.is_supported(p):
        return None
    return read_layers


def read_layers(path) -> list[tuple]:
    """Read ``path`` (a file, or a DICOM folder: one layer per series).

    Returns ``[(data, layer_kwargs, layer_type), ...]``: ``"image"``, or ``"labels"``
    for a DICOM SEG (one labels layer, or one per segment when segments overlap),
    on the grid of its source series; the full affine, the source
    and the reader's notes are in ``layer_kwargs["metadata"]``. Notes (e.g. "4D
    image: using the first volume") are also issued as warnings, which napari shows
    as notifications. Raises :class:`napari_cuts.errors.ReadError` for a supported
    but unreadable file, with a message that names it.
    """
    p = _single_path(path)
    if p is None:
        p = path
    layers = []
    for image in io.read_all(p):
        for note in image.notes:
            warnings.warn(note, UserWarning, stacklevel=2)
        layers.extend(image_layers(image))
    return layers


def image_layers(image) -> list[tuple]:
    """napari layer tuples of one :class:`~napari_cuts.io.ImageData`: one layer, or for a
    multi-sequence image (a 4D NIfTI of sequences, ``metadata["sequences"]``) one image
    layer per sequence, ``"<name> <sequence>"``, all with the same scale, translate and
    affine, each with ``metadata["sequence"]`` / ``["sequence_index"]``."""
    kw = image.layer_kwargs()
    names = image.sequences
    if not names:
        return [(image.data, kw, image.layer_type)]
    out = []
    for i, seq in enumerate(names):
        meta = dict(kw["metadata"], sequence=seq, sequence_index=i)
        out.append((image.data[..., i], {**kw, "name": f"{kw['name']} {seq}",
                                         "metadata": meta, "rgb": False}, "image"))
    return out


LEVELS_NAME = "CUTS levels"
LABELS_NAME = "CUTS labels"
LEVELS_KEY = "napari_cuts_levels"
OBJECTS_KEY = "napari_cuts_objects"


def _default_level(counts) -> int:
    import numpy as np

    ok = np.nonzero(np.asarray(counts) <= 10)[0]
    return int(ok[0]) if len(ok) else int(len(counts) - 1)


def _open_image_like(sess, shape):
    """An image layer already open in the current viewer that the session may lie over:
    the same spatial shape and, where the layer names its file, the same content."""
    try:
        import napari
        from napari.layers import Image

        viewer = napari.current_viewer()
    except Exception:  # noqa: BLE001 - no viewer: nothing open
        return None
    if viewer is None:
        return None
    from .session import file_digest

    for lay in viewer.layers:
        if not isinstance(lay, Image):
            continue
        data = lay.data[0] if getattr(lay, "multiscale", False) else lay.data
        spatial = tuple(data.shape[:-1]) if getattr(lay, "rgb", False) else tuple(data.shape)
        if spatial != tuple(shape):
            continue
        src = (lay.metadata or {}).get("source")
        want = sess.source.get("sha256")
        if want and src:
            try:
                if file_digest(src)["sha256"] != want:
                    continue
            except OSError:
                pass
        return lay
    return None


def read_session_layers(path) -> list[tuple]:
    """Read a napari-cuts session folder (or a ``napari-cuts segment`` output folder).

    Returns the source image (read again from its file, when it is found and unchanged),
    a "CUTS levels" Labels layer (the saved level only, never every level) whose
    metadata holds ``napari_cuts_levels`` (folder, hierarchy path, level, encoder), and a
    "CUTS labels" layer with the objects in ``napari_cuts_objects``; the CUTS widget
    adopts them. When the source is missing or changed the levels and labels are given
    only over a matching image already open in the viewer; otherwise a
    :class:`~napari_cuts.errors.ReadError` names the expected file and what to do.
    """
    import numpy as np

    from .errors import ReadError
    from .session import read_session

    p = _single_path(path)
    sess = read_session(p if p is not None else path)
    hier = sess.hierarchy()
    shape = tuple(hier.shape)
    status, message = sess.check_source()
    layers = []
    image_kwargs = None
    if status == "ok":
        src = sess.source_path()
        images = io.read_all(src)
        image = images[0]
        spatial = tuple(image.spatial_shape)
        if spatial != shape:
            raise ReadError(
                f"session {sess.folder}: its hierarchy is {' x '.join(map(str, shape))} but "
                f"the source image {src} is {' x '.join(map(str, spatial))}: the image has "
                "changed. Open the original image first, then the session folder, or "
                "segment the image again.")
        for note in image.notes:
            warnings.warn(note, UserWarning, stacklevel=2)
        image_kwargs = image.layer_kwargs()
        layers.extend(image_layers(image))
        # a session of several co-registered files (T1, T2, FLAIR chosen together):
        # every file's layers, so the widget finds all its channels open
        for rec in sess.source_files()[1:]:
            for other in io.read_all(rec["path"]):
                if tuple(other.spatial_shape) != shape:
                    raise ReadError(
                        f"session {sess.folder}: its hierarchy is "
                        f"{' x '.join(map(str, shape))} but the source file {rec['path']} is "
                        f"{' x '.join(map(str, other.spatial_shape))}; open the original "
                        "images first, then the session folder, or segment them again.")
                layers.extend(image_layers(other))
        geometry = {"scale": image_kwargs["scale"], "translate": image_kwargs["translate"],
                    "metadata": dict(image_kwargs["metadata"])}
    else:
        lay = _open_image_like(sess, shape)
        if lay is None:
            raise ReadError(message)
        warnings.warn(message.split(". ")[0] + f"; shown over the open layer '{lay.name}'.",
                      UserWarning, stacklevel=2)
        geometry = {"scale": tuple(lay.scale), "translate": tuple(lay.translate),
                    "metadata": dict(lay.metadata or {})}
    level = sess.level if sess.level is not None else _default_level(hier.n_clusters)
    level = int(np.clip(level, 0, hier.n_levels - 1))
    lab = hier.labels(level)
    levels = (lab + 1).astype(np.uint16 if int(hier.n_clusters[level]) < 65535 else np.uint32)
    source = (geometry["metadata"] or {}).get("source") or sess.source.get("path")
    info = {"folder": str(sess.folder), "hierarchy": str(sess.hierarchy_path),
            "level": level, "persistent": sess.persistent, "kind": sess.kind,
            "encoder": None if sess.encoder_path is None else str(sess.encoder_path),
            "source": source}
    common = {"scale": tuple(geometry["scale"]), "translate": tuple(geometry["translate"])}
    layers.append((levels, {**common, "name": LEVELS_NAME, "opacity": 0.5,
                            "metadata": {**geometry["metadata"], LEVELS_KEY: info}}, "labels"))
    labels = sess.labels()
    if labels is None or tuple(labels.shape) != shape:
        labels = np.zeros(shape, np.uint8)
    objects = {"folder": str(sess.folder), "objects": sess.objects, "current": sess.current}
    layers.append((labels, {**common, "name": LABELS_NAME, "opacity": 0.55,
                            "metadata": {**geometry["metadata"], OBJECTS_KEY: objects}},
                   "labels"))
    return layers
