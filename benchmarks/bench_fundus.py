"""Time to a first result: ``napari-cuts segment`` on the sample fundus, default settings.

Runs the real command in a fresh Python process (imports, the packaged warm start, its
fine-tune, embedding, condensation and writing all counted) on
``sample_data/fundus.png`` (512 x 512 RGB) with NO budget options, so what is measured
is what a user gets from ``napari-cuts segment sample_data/fundus.png --out DIR``:
by default the packaged warm start fine-tuned for ``pipeline.WARM_START_SECONDS``.
Reports the process's wall time, the stages from ``run.json``, the peak RSS and whether
issue 13's target (<= 30 s) holds. ``quick``: the same with ``--seconds 3`` (a smoke run;
its time is not the default's).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _segment_process import run_segment  # noqa: E402

TARGET_SECONDS = 30.0


def run(quick: bool = False) -> dict:
    src = REPO / "src" / "napari_cuts" / "sample_data" / "fundus.png"
    if not src.exists():
        return {"skipped": f"{src} not found"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        args = ["segment", str(src), "--out", str(out)] + (["--seconds", "3"] if quick else [])
        job = run_segment(args, out)
        if "error" in job:
            return job
        wall, summary = job["wall"], job["summary"]
    ws = summary.get("warm_start") or {}
    res = {
        "image": "sample_data/fundus.png",
        "shape": summary.get("shape"),
        "options": args[4:] or "defaults",
        "warm_start": ws.get("file"),
        "seconds_wall": round(wall, 1),
        "seconds_training": summary.get("seconds_training"),
        "seconds_embed": summary.get("seconds_embed"),
        "seconds_condense": summary.get("seconds_condense"),
        "seconds_in_command": summary.get("seconds_total"),
        "peak_mb": job["peak_mb"],
        "n_levels": summary.get("n_levels"),
    }
    if not quick:
        res["target_seconds"] = TARGET_SECONDS
        res["within_target"] = wall <= TARGET_SECONDS
    return res


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
