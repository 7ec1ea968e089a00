"""What the 2D path (:mod:`napari_cuts.pipeline`) and the volume path
(:mod:`napari_cuts.pipeline_volume`) share: the features condensation sees, the result
type, the memory probe and the small helpers of the ``segment`` job.

Import these names from :mod:`napari_cuts.pipeline`, which re-exports them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .images import Progress

#: Weight of the encoder-normalised image channels joined to the unit-length embeddings
#: before condensation and k-means, divided by sqrt(C): black-to-white in every channel
#: then moves a pixel by 8 while two embeddings 60 degrees apart are 1 apart
#: (docs/decisions/0002).
IMAGE_WEIGHT = 8.0


@dataclass
class SegmentResult:
    """The outcome of segmenting one 2D image or one volume.

    ``hierarchy.labels(level)`` is at the input's full resolution, ``(H, W)`` or
    ``(Z, Y, X)``. ``embeddings`` is the (possibly pooled) encoder output, ``(h, w, D)``
    or ``(z, y, x, D)``; ``features`` what condensation saw (:func:`clustering_features`),
    with ``D + C`` columns. ``pool`` is the block side (2D, an int) or the block size per
    axis (volumes, a tuple).
    """

    hierarchy: object
    embeddings: np.ndarray
    pool: int
    notes: list[str]
    seconds: dict
    features: Optional[np.ndarray] = None


def clustering_features(embeddings: np.ndarray, image01: np.ndarray,
                        weight: float = IMAGE_WEIGHT) -> np.ndarray:
    """Unit-length embeddings ``(h, w, D)`` joined to ``weight / sqrt(C)`` times the
    encoder-normalised image ``(h, w, C)`` in [0, 1].

    The encoder's embeddings keep texture but lose part of the intensity contrast (CSF
    against brain on grey MRI, a pale lesion on a fundus); the image channels give it back.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    c = image01.shape[-1]
    d = emb.shape[-1]
    out = np.empty((*emb.shape[:-1], d + c), dtype=np.float32)
    flat_e = emb.reshape(-1, d)
    flat_o = out.reshape(-1, d + c)
    # in blocks of rows: one output array, no full-size temporaries (a brain's grid
    # embedding is 0.6 GB; the whole-array expression held four copies at once)
    step = 1 << 16
    for a in range(0, flat_e.shape[0], step):
        blk = flat_e[a:a + step]
        flat_o[a:a + step, :d] = blk / np.maximum(np.linalg.norm(blk, axis=-1, keepdims=True),
                                                 1e-12)
    out[..., d:] = (weight / np.sqrt(c)) * image01
    return out


def available_memory_mb() -> float | None:
    """Memory the OS can still give this process, in MB (None where unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


def informative(img: np.ndarray) -> bool:
    """True if a 2D image has something to segment (not constant, finite)."""
    a = np.asarray(img)
    return bool(np.isfinite(a).all() and a.size and a.max() > a.min())


def load_weights(weights, device: str = "auto"):
    """``weights`` as an Encoder: a path is loaded, an Encoder returned as it is."""
    from .encoder import Encoder, load_encoder

    return weights if isinstance(weights, Encoder) else load_encoder(weights, device=device)


def stage(progress: Progress, name: str) -> Progress:
    """A progress callback that prefixes messages with the stage name."""
    if progress is None:
        return None

    def cb(done, total, message):
        progress(done, total, f"{name}: {message}")

    return cb


def train_or_load(train, out: Path, *, summary: dict, t_start: float):
    """Run ``train() -> (encoder, trained)``; save a trained encoder as
    ``out/encoder.pt`` and record what happened in the job's ``summary``."""
    enc, trained = train()
    summary["trained"] = trained
    summary["device"] = str(getattr(enc, "device", summary.get("device")))
    summary["warm_start"] = enc.metadata.get("warm_start")
    if trained:
        summary["steps"] = int(enc.metadata.get("steps", 0))
        summary["training_stopped"] = enc.metadata.get("stopped")
        enc.save(out / "encoder.pt")
        summary["encoder"] = str(out / "encoder.pt")
    summary["seconds_training"] = round(time.perf_counter() - t_start, 2)
    return enc


def in_parallel(*jobs) -> list:
    """Run the callables ``jobs`` at once, the first in this thread and the others on
    worker threads (the writers compress with zlib, which releases the GIL, so the
    cores share the work), and return their results in order; an exception raised by
    any of them is raised here once all have ended."""
    from concurrent.futures import ThreadPoolExecutor

    if len(jobs) < 2:
        return [job() for job in jobs]
    with ThreadPoolExecutor(max_workers=len(jobs) - 1) as pool:
        futures = [pool.submit(job) for job in jobs[1:]]
        try:
            first = jobs[0]()
        finally:
            for f in futures:
                f.exception()          # wait for every job before raising
    return [first, *(f.result() for f in futures)]


def start_and_steps(warm_start, packaged, shapes, *, ndim: int, steps, epochs, seconds):
    """Where training starts and its step budget: ``(init, steps)``.

    ``warm_start`` None means the packaged weights (``packaged()``, None where the
    package ships none) for a budget in steps, given or default, and scratch for one in
    epochs or seconds; True / False / a path or an Encoder as
    :func:`napari_cuts.pipeline.get_encoder` says. With no budget at all, ``steps`` is
    :func:`napari_cuts.budget.steps_for` of the inputs' ``shapes``."""
    from .budget import steps_for
    from .encoder import Encoder

    if warm_start is None:
        warm_start = epochs is None and seconds is None
    if isinstance(warm_start, (str, Path, Encoder)):
        init = warm_start
    else:
        init = packaged() if warm_start else None
    if steps is None and epochs is None and seconds is None:
        steps = steps_for(shapes, ndim=ndim, warm=init is not None)
    return init, steps


def seconds_of(job) -> float:
    """Run the callable ``job`` and return the seconds it took."""
    t = time.perf_counter()
    job()
    return time.perf_counter() - t


def save_npy(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` as ``.npy`` atomically (temporary file, then rename)."""
    from .fileutil import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
