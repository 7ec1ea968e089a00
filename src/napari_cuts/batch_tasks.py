"""The tasks of ``napari-cuts batch`` that run on the dask workers.

:func:`encoder_blob` (the cohort encoder's bytes, a task every other task depends on),
:func:`reference_task` (segment the reference image, return its prototype) and
:func:`process_input` (segment one input, write its folder). A task writes everything
into ``OUT/.partial-<stem>-<random>/`` and publishes the folder with one
``os.replace`` (:func:`publish`): ``OUT/<stem>/`` either holds a finished input, with
``done.json`` saying what was computed from what (:func:`is_done`), or does not exist,
whatever kills the worker or the client. The client side is :mod:`napari_cuts.cohort`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

import numpy as np

from . import __version__
from .cohort_files import empty_row, has_physical_spacing, is_volume, one_line
from .errors import InputError
from .matching import check_reference_point, image_columns, matched_mask, prototype_at

__all__ = ["encoder_blob", "reference_task", "process_input", "publish", "is_done",
           "DONE", "DONE_VERSION", "PARTIAL_PREFIX", "TEST_MARKER_ENV"]

#: Format version of ``done.json`` and of the matching rule (a change makes reruns recompute).
DONE_VERSION = 3
DONE = "done.json"
PARTIAL_PREFIX = ".partial-"
#: Tests and ``bench cohort`` only: a folder in the workers' environment where every
#: task writes ``<phase>@<pid>@<random>.started`` as it starts a phase (``encoder``,
#: ``reference``, ``<stem>``, ``<stem>.write`` once its hierarchy is saved and its
#: other files are being written); with ``hold-<phase>`` in that folder the task then
#: waits (at most :data:`TEST_HOLD_SECONDS`) for ``release-<phase>``, so that a test
#: can kill its worker at that very moment without sleeping.
TEST_MARKER_ENV = "NAPARI_CUTS_TEST_MARKER_DIR"
TEST_HOLD_SECONDS = 60.0

_ENCODERS: dict = {}
_ENC_LOCK = threading.Lock()


def _single_thread_torch() -> None:
    """One torch thread per task: tasks of a worker's threads run side by side, and a
    fixed thread count keeps the results independent of the engine. (The encoder
    sets torch to every core before each embedding, through
    ``encoder_network._use_all_cores``; here that means the worker's share.)"""
    import torch

    from . import encoder_network as E

    if getattr(E._use_all_cores, "_cohort", False):
        torch.set_num_threads(1)
        return

    def one(num_threads=None):
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)

    one._cohort = True
    E._use_all_cores = one
    torch.set_num_threads(1)


def _marker(phase: str) -> None:
    """The test hook of :data:`TEST_MARKER_ENV` (nothing when it is not set)."""
    folder = os.environ.get(TEST_MARKER_ENV)
    if not folder:
        return
    d = Path(folder)
    try:
        (d / f"{phase}@{os.getpid()}@{uuid.uuid4().hex[:8]}.started").touch()
        if (d / f"hold-{phase}").exists():
            deadline = time.monotonic() + TEST_HOLD_SECONDS
            while not (d / f"release-{phase}").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
    except OSError:
        pass


def encoder_blob(payload: bytes, sha: str) -> bytes:
    """Worker: the cohort encoder's file bytes, as a task every other task depends on.

    A task, not ``client.scatter``: the scheduler keeps how to make it, so when the
    workers holding it die it is made again on another one (scattered data would be
    lost with them, and the tasks depending on it cancelled)."""
    _marker("encoder")
    return payload


def _encoder_from_bytes(payload: bytes, sha: str):
    """The encoder of these weights, loaded once per worker process."""
    from .encoder import load_encoder

    with _ENC_LOCK:
        enc = _ENCODERS.get(sha)
        if enc is None:
            fd, tmp = tempfile.mkstemp(prefix="napari_cuts_encoder_", suffix=".pt")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(payload)
                enc = load_encoder(tmp, device="auto")
            finally:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            _ENCODERS.clear()
            _ENCODERS[sha] = enc
        return enc


def _segment(enc, src, seed: int):
    """Segment one input read by ``read_image`` with the cohort encoder."""
    from .encoder import is_volume_encoder
    from .pipeline import segment_image, segment_volume

    data = np.asarray(src.data)
    vol = is_volume(src)
    if vol != is_volume_encoder(enc):
        raise InputError(f"{'a volume' if vol else 'a 2D image'} of shape {data.shape}, but the "
                         f"cohort encoder is for {'volumes' if is_volume_encoder(enc) else '2D images'}; "
                         "segment 2D images and volumes in separate batches.")
    if vol:
        spacing = tuple(float(v) for v in src.spacing[:3])
        return segment_volume(enc, data, spacing=spacing, seed=seed), spacing
    return segment_image(enc, data, seed=seed), tuple(float(v) for v in src.spacing[:2])


def reference_task(path: str, point, enc_payload: bytes, enc_sha: str, seed: int) -> dict:
    """Worker: segment the reference image and return its prototype (or ``{"error"}``)."""
    from .io import read_image

    _single_thread_torch()
    _marker("reference")
    try:
        enc = _encoder_from_bytes(enc_payload, enc_sha)
        src = read_image(path)
        idx = check_reference_point(src, point, Path(path).name)
        res, _ = _segment(enc, src, seed)
        out = prototype_at(res.hierarchy, res.features, res.pool, idx,
                           n_image=image_columns(res))
        out["point"] = list(idx)
        return out
    except Exception as exc:  # noqa: BLE001 - the client raises it as an InputError
        return {"error": one_line(exc)}


def process_input(path: str, stem: str, out_dir: str, enc_payload: bytes, enc_sha: str,
                  seed: int, expect: dict, reference: Optional[dict] = None,
                  _crash_once: Optional[tuple] = None, enc_path: Optional[str] = None) -> dict:
    """Worker: segment one input and publish ``out_dir/stem/`` atomically.

    Returns the summary row (``status`` ``ok`` or ``error``, ``error`` its one-line
    message); never raises for a bad input. An input already published with ``expect``
    (a run of this task whose worker died after publishing it, or another copy of it)
    is not computed again: its row is returned."""
    from .fileutil import write_json
    from .io import read_image, write_labels, write_mask

    t0 = time.perf_counter()
    row = empty_row(path)
    out = Path(out_dir)
    partial = out / f"{PARTIAL_PREFIX}{stem}-{uuid.uuid4().hex[:10]}"
    _marker(stem)
    done = is_done(out / stem, expect)
    if done is not None:
        return dict(done["row"], image=path)
    try:
        _single_thread_torch()
        enc = _encoder_from_bytes(enc_payload, enc_sha)
        src = read_image(path)
        res, spacing = _segment(enc, src, seed)
        hier = res.hierarchy
        hier.metadata.update({"input": str(path)})
        partial.mkdir(parents=True)
        medical = src.format in ("nifti", "dicom")
        vol = is_volume(src)
        files = ["hierarchy.npz", "prompts.npz"]
        hier.save(partial / "hierarchy.npz")
        from .prompts import save_prompt_data

        save_prompt_data(partial, image=np.asarray(src.data), spacing=spacing if vol else (
            spacing if len(spacing) == 2 and all(v > 0 for v in spacing) else (1.0, 1.0)))
        _marker(f"{stem}.write")
        if _crash_once is not None and _crash_once[0] == stem and not Path(_crash_once[1]).exists():
            Path(_crash_once[1]).write_text("crashed once\n")   # tests: die mid-write, once
            os.kill(os.getpid(), 9)
        pers = hier.persistent()
        pname = "persistent.nii.gz" if (medical or vol) else "persistent.png"
        write_labels(partial / pname, pers, like=src if medical else None)
        files.append(pname)
        info = {"shape": list(np.asarray(src.data).shape), "n_levels": int(hier.n_levels),
                "n_clusters": [int(c) for c in hier.n_clusters], "format": src.format,
                "volume": bool(vol)}
        if reference is not None:
            lv, cid, mask, match = matched_mask(hier, res.features, res.pool, reference,
                                                n_image=image_columns(res))
            mname = "mask.nii.gz" if (medical or vol) else "mask.png"
            write_mask(partial / mname, mask, like=src if medical else None)
            files.append(mname)
            px = int(np.count_nonzero(mask))
            row.update({"level": lv, "n_clusters": int(hier.n_clusters[lv]), "mask_pixels": px})
            if vol:
                row["volume_ml"] = round(px * float(np.prod(spacing)) / 1000.0, 6)
            elif has_physical_spacing(src):
                row["area_mm2"] = round(px * float(np.prod(spacing)), 6)
            info.update(match)
        row.update({"status": "ok", "seconds": round(time.perf_counter() - t0, 3)})
        # what a session needs to reopen this folder in napari (as segment's run.json)
        from .session import file_digest

        kw = src.layer_kwargs()
        write_json(partial / "run.json", {
            "napari_cuts_version": __version__, "input": str(Path(path).resolve()),
            "seed": int(seed), "shape": info["shape"], "batch": True,
            "encoder": str(Path(enc_path).resolve()) if enc_path else None,
            "source": {**file_digest(path), "shape": info["shape"]},
            "geometry": {"scale": list(kw["scale"]), "translate": list(kw["translate"]),
                         "affine": kw["metadata"].get("affine"),
                         "spacing": [float(v) for v in src.spacing]},
            "n_levels": info["n_levels"], "n_clusters": info["n_clusters"]})
        files.append("run.json")
        done = dict(expect)
        done.update({"stem": stem, "files": {f: (partial / f).stat().st_size for f in files},
                     "row": row, "info": info, "napari_cuts_version": __version__})
        write_json(partial / DONE, done)
        publish(partial, out / stem)
        return row
    except Exception as exc:  # noqa: BLE001 - one bad input is a row, the others go on
        shutil.rmtree(partial, ignore_errors=True)
        row.update({"status": "error", "error": one_line(exc),
                    "seconds": round(time.perf_counter() - t0, 3)})
        return row


def publish(partial: Path, final: Path) -> None:
    """Move a finished ``partial`` folder onto ``final`` (one rename when ``final`` does
    not exist; an older ``final`` is moved aside first and removed after)."""
    try:
        os.replace(partial, final)
        return
    except OSError:
        if not final.exists():
            raise
    old = final.with_name(f"{PARTIAL_PREFIX}old-{final.name}-{uuid.uuid4().hex[:10]}")
    try:
        os.replace(final, old)
    except FileNotFoundError:
        pass
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)


def is_done(folder: Path, expect: dict) -> Optional[dict]:
    """``done.json`` of a finished input folder when it matches ``expect`` (same input
    signature, encoder, seed, reference) and every file it lists is there with its
    size; else None (the input is recomputed)."""
    try:
        done = json.loads((Path(folder) / DONE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict) or any(done.get(k) != v for k, v in expect.items()):
        return None
    files = done.get("files")
    if not isinstance(files, dict) or not files:
        return None
    for name, size in files.items():
        try:
            if (Path(folder) / name).stat().st_size != size:
                return None
        except OSError:
            return None
    return done
