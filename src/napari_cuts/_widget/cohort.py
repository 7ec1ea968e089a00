""""Apply to all images" in the CUTS dock widget: one structure found in every open image.

After a click (on a 2D image, or in any slice of a volume), :meth:`Cohort.apply` takes the
mask's structure as the reference: its prototype is the mean of the features
condensation saw over the mask (:func:`napari_cuts.matching.prototype_of_mask`). Every
other open image layer of the same kind (2D image or volume, the same channel count) is
segmented with the SAME encoder (no training) and its matching structure found by the
batch's rule (:func:`napari_cuts.matching.match_image`: the most similar cluster says
where), its extent the cluster there whose size is closest to the clicked mask's (the
user chose the granularity with the slider; on 40 retina photographs at 128 x 128, 5
references x 39 images, mean Dice 0.42 against 0.41 for the batch's click rule), in a
thread worker with progress and cancel. The layers are added only when every image is done, so a cancel
leaves nothing half made: one Labels layer per image, ``"<image> CUTS match"``, with the
image's scale, translate, affine and metadata (it exports like the image's mask), and
its area in mm² (or mL for a volume) where the layer has a physical scale. A failed
image is reported and the others go on, as in ``napari-cuts batch``.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from ..errors import Cancelled, CutsError
from ..images import check_cancel, check_image
from .settings import physical_scale, single_colour, source_from_layer

log = logging.getLogger(__name__)

#: Suffix of the layer made for each image.
MATCH_SUFFIX = " CUTS match"


def match_name(image_name: str) -> str:
    return f"{image_name}{MATCH_SUFFIX}"


def area_text(pixels: int, scale, volume: bool, physical: bool) -> tuple[dict, str]:
    """``({"pixels", "mm2" | "ml"}, "123 pixels, 4.56 mm²")`` of a mask of ``pixels``."""
    sc = np.asarray(scale, float)
    unit = "voxels" if volume else "pixels"
    out = {"pixels": int(pixels)}
    text = f"{int(pixels)} {unit}"
    if physical:
        if volume:
            out["ml"] = pixels * float(np.prod(sc[-3:])) / 1000.0
            text += f", {out['ml']:.2f} mL"
        else:
            out["mm2"] = pixels * float(np.prod(sc[-2:]))
            text += f", {out['mm2']:.2f} mm\u00b2"
    return out, text


class Cohort:
    """"Apply to all images" from the mask in ``state``; ``rows`` are the last run's
    results.

    Services: the ``viewer`` (its layers), ``notify(level, text)``, ``start(name, job,
    on_return=)`` (the panel's job runner), ``resolve_encoder()`` (a session's weights
    loaded on demand), ``image_layers()`` (the open image layers), ``show_text(text)``
    (the line under the buttons) and ``parent`` (the folder dialog's parent widget)."""

    def __init__(self, state, viewer, *, notify, start, resolve_encoder, image_layers,
                 show_text, parent=None) -> None:
        self.state = state
        self.viewer = viewer
        self.notify = notify
        self.start = start
        self.resolve_encoder = resolve_encoder
        self.image_layers = image_layers
        self.show_text = show_text
        self.parent = parent
        self.rows: list = []          # one dict per image of the last finished run
        self.layers: dict = {}        # image name -> its match layer
        self.folder_rows: list = []   # the last folder run's summary rows

    def targets(self) -> tuple[list, list]:
        """``([(layer, source)], [skip reasons])``: the other open image layers that can
        take the widget's encoder (same kind, same channel count)."""
        src = self.state.source
        mine = {id(lay) for lay in src.layers}
        ok, skipped = [], []
        for lay in self.image_layers():
            if id(lay) in mine:
                continue
            try:
                t = source_from_layer(lay)
                if not t.volume:
                    check_image(t.slices[0], f"layer '{lay.name}'")
            except CutsError as exc:
                skipped.append(f"'{lay.name}' ({exc})")
                continue
            if t.kind != src.kind:
                kind = {"image": "a 2D image", "volume": "a volume", "stack": "a stack of "
                        "colour images"}
                skipped.append(f"'{lay.name}' is {kind[t.kind]}, not {kind[src.kind]}")
            elif t.channels != src.channels:
                skipped.append(f"'{lay.name}' has {t.channels} channel(s), not {src.channels}")
            else:
                ok.append((lay, t))
        return ok, skipped

    def _reference(self) -> Optional[tuple]:
        """``(encoder, prototype, area, seed)`` of the clicked structure, or None after a
        message saying what is missing."""
        from ..matching import image_columns, prototype_of_mask

        st, notify = self.state, self.notify
        mask = st.mask
        if not st.results or st.source is None or mask is None or not mask.any():
            notify("error", "Apply to all images needs a structure: segment an image and "
                            "click the structure first.")
            return None
        src = st.source
        if src.kind == "stack":
            notify("error", "Apply to all images works from a 2D image or a volume "
                               "segmented as one object, not from a stack of colour images "
                               "segmented one by one.")
            return None
        res = st.results[0]
        if res.features is None:
            notify("error", "Apply to all images needs the reference image's features, "
                               "which a session does not keep: Segment the image again, click "
                               "the structure, then Apply to all images.")
            return None
        enc = self.resolve_encoder()
        if enc is None:
            notify("error", "No encoder: Train one or Load weights first.")
            return None
        try:
            proto = prototype_of_mask(res.features, res.pool, mask,
                                      n_image=image_columns(res))
        except CutsError as exc:
            notify("error", str(exc))
            return None
        area = float(np.count_nonzero(mask)) / float(mask.size)
        return enc, proto, area, int(st.settings.seed)

    def _ready(self):
        """The reference (see :meth:`_reference`) when a job can start now, else None
        (with a message: busy, or no reference)."""
        if self.state.busy:
            self.notify("warning", f"napari-cuts is busy ({self.state.job}); wait or Cancel.")
            return None
        return self._reference()

    def apply(self) -> bool:
        """Start the job; False (with a message saying why) when it cannot run."""
        from ..matching import match_image

        ref = self._ready()
        if ref is None:
            return False
        enc, proto, area, seed = ref
        src = self.state.source
        targets, skipped = self.targets()
        if not targets:
            why = ("; skipped: " + "; ".join(skipped)) if skipped else ""
            self.notify("error", "No other open image of the same kind as "
                               f"'{src.layer.name}' ({'volume' if src.volume else '2D image'}, "
                               f"{src.channels} channel(s)) to apply the structure to: open "
                               f"more images (File > Open){why}.")
            return False
        jobs = [(lay.name, t.array if t.one_volume else t.slices[0], t.spacing)
                for lay, t in targets]
        layers = {lay.name: lay for lay, _ in targets}
        self._skipped = skipped

        def job(progress, cancel):
            n = len(jobs)
            rows = []
            for j, (name, data, spacing) in enumerate(jobs):
                check_cancel(cancel)

                def prog(d, t, m, j=j, name=name):
                    t = max(int(t), 1)
                    progress(j * t + min(int(d), t), n * t, f"image {j + 1}/{n} '{name}': {m}")

                try:
                    r = match_image(enc, data, proto, spacing=spacing, seed=seed, area=area,
                                    progress=prog, cancel=cancel)
                except Cancelled:
                    raise
                except CutsError as exc:
                    rows.append({"image": name, "error": str(exc)})
                    continue
                r.pop("result", None)
                rows.append({"image": name, **r})
            check_cancel(cancel)
            return rows
            yield  # noqa: unreachable - a generator job

        return self.start("applying to all images", job,
                          on_return=lambda rows: self._done(rows, layers))

    def _done(self, rows: list, layers: dict) -> None:
        """Add one mask layer per image (GUI thread), replacing an earlier one."""
        st, viewer = self.state, self.viewer
        volume = st.source.volume
        lines = []
        made = {}
        for row in rows:
            lay = layers.get(row["image"])
            if lay is None or lay not in viewer.layers:
                continue
            if "error" in row:
                lines.append(f"{row['image']}: failed ({row['error']})")
                continue
            stats, text = area_text(row["mask_pixels"], lay.scale, volume, physical_scale(lay))
            row.update(stats)
            old = self.layers.get(row["image"])
            name = match_name(row["image"])
            for prev in [old] + [x for x in viewer.layers if x.name == name]:
                if prev is not None and prev in viewer.layers:
                    viewer.layers.remove(prev)
            info = {k: row[k] for k in ("level", "cluster", "n_clusters", "mask_pixels",
                                        "match_similarity", "match_seed_point") if k in row}
            info.update({k: row[k] for k in ("mm2", "ml") if k in row})
            info["reference"] = st.source.layer.name
            md = {**dict(lay.metadata or {}), "napari_cuts_match": info}
            new = viewer.add_labels(row["mask"].astype(np.uint8), name=name, opacity=0.6,
                                      scale=tuple(lay.scale), translate=tuple(lay.translate),
                                      affine=lay.affine.affine_matrix, metadata=md)
            single_colour(new, (0.0, 0.9, 1.0, 1.0))
            made[row["image"]] = new
            lines.append(f"{row['image']}: {text} (level {row['level']}, similarity "
                         f"{row['match_similarity']:.2f})")
        self.layers.update(made)
        self.rows = rows
        if st.levels_layer is not None and st.levels_layer in viewer.layers:
            viewer.layers.selection.active = st.levels_layer
        skipped = getattr(self, "_skipped", [])
        if skipped:
            lines.append("skipped: " + "; ".join(skipped))
        self.show_text("\n".join(lines))
        n_ok = len(made)
        self.notify("info", f"Applied to {n_ok} image(s)"
                    + (f", {len(rows) - n_ok} failed" if len(rows) > n_ok else "") + ".")

    def apply_folder(self, folder, out=None) -> bool:
        """The same for every image file of ``folder`` (not opened as layers): masks and a
        ``summary.csv`` written to ``out`` (default ``folder/cuts_masks``), in a worker."""
        from pathlib import Path

        from ..matching import match_folder

        ref = self._ready()
        if ref is None:
            return False
        enc, proto, area, seed = ref
        folder = Path(str(folder))
        out_dir = Path(str(out)) if out else folder / "cuts_masks"

        def job(progress, cancel):
            return match_folder(enc, [folder], proto, out_dir, area=area, seed=seed,
                                progress=progress, cancel=cancel)
            yield  # noqa: unreachable - a generator job

        def done(rows):
            self.folder_rows = rows
            ok = [r for r in rows if r.get("status") == "ok"]
            bad = [r for r in rows if r.get("status") != "ok"]
            lines = [f"Folder {folder.name}: {len(ok)} mask(s) written to {out_dir}"
                     + (f", {len(bad)} failed" if bad else "") + "."]
            lines += [f"{Path(r['image']).name}: failed ({r['error']})" for r in bad[:5]]
            self.show_text("\n".join(lines))
            self.notify("info", lines[0])

        return self.start("applying to a folder", job, on_return=done)

    def folder_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path = QFileDialog.getExistingDirectory(self.parent, "Apply to the images of a folder")
        if path:
            self.apply_folder(path)

    def match_layer(self, image_name: str) -> Optional[object]:
        """The match layer made for image ``image_name`` (None if none)."""
        lay = self.layers.get(image_name)
        return lay if lay is not None and lay in self.viewer.layers else None
