"""Scale benchmark: ``napari-cuts segment`` on an 8-megapixel HRF fundus photograph.

Runs the real command in a subprocess (so peak memory is the whole job's) on
``../shared/data/hrf/01_h.jpg`` (2336 x 3504 RGB) and reports wall time, peak RSS and
what the pipeline did (pool factor, grid, levels). quick=True uses a 1168 x 1752
downscale and a 10-second training budget.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _segment_process import run_segment  # noqa: E402


def _data_dir() -> Path:
    env = os.environ.get("NAPARI_CUTS_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def run(quick: bool = False) -> dict:
    src = _data_dir() / "hrf" / "01_h.jpg"
    if not src.exists():
        return {"skipped": f"{src} not found (HRF images are in ../shared/data/hrf)"}
    with tempfile.TemporaryDirectory() as tmp:
        image = src
        if quick:
            import imageio.v3 as iio

            im = iio.imread(src)[::2, ::2]
            image = Path(tmp) / "hrf_half.png"
            iio.imwrite(image, im)
        seconds = 10 if quick else 60
        out = Path(tmp) / "out"
        job = run_segment(["segment", image, "--out", out, "--seconds", seconds], out)
        if "error" in job:
            return job
        wall, summary = job["wall"], job["summary"]
    return {
        "image": src.name if not quick else f"{src.name} (half size)",
        "shape": summary["shape"],
        "training_seconds_budget": seconds,
        "seconds_total": round(wall, 1),
        "seconds_embed": summary.get("seconds_embed"),
        "seconds_condense": summary.get("seconds_condense"),
        "peak_mb": job["peak_mb"],
        "pool": summary.get("pool"),
        "n_levels": summary.get("n_levels"),
    }
