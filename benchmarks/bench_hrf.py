"""Scale benchmark: ``napari-cuts segment`` on an 8-megapixel HRF fundus photograph.

Runs the real command in a subprocess (so peak memory is the whole job's) on
``../shared/data/hrf/01_h.jpg`` (2336 x 3504 RGB) and reports wall time, peak RSS and
what the pipeline did (pool factor, grid, levels). quick=True uses a 1168 x 1752
downscale and a 10-second training budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
        code = (
            "import resource, sys, json; from napari_cuts.cli import main; "
            f"rc = main(['segment', {str(image)!r}, '--out', {str(out)!r}, '--seconds', '{seconds}']); "
            "print(json.dumps({'rc': rc, 'maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))"
        )
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1:] or proc.returncode}
        stats = json.loads(proc.stdout.strip().splitlines()[-1])
        summary = json.loads((out / "run.json").read_text())
    return {
        "image": src.name if not quick else f"{src.name} (half size)",
        "shape": summary["shape"],
        "training_seconds_budget": seconds,
        "seconds_total": round(wall, 1),
        "seconds_embed": summary.get("seconds_embed"),
        "seconds_condense": summary.get("seconds_condense"),
        "peak_mb": round(stats["maxrss_kb"] / 1024, 1),
        "pool": summary.get("pool"),
        "n_levels": summary.get("n_levels"),
    }
