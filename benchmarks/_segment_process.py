"""Shared by the benchmarks that time the real ``napari-cuts segment`` command.

:func:`run_segment` runs ``napari_cuts.cli.main(args)`` in a fresh Python process, so
that imports and the whole job's peak memory are counted, and returns its wall time,
peak RSS and the ``run.json`` it wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def run_segment(args: list, out: Path) -> dict:
    """``{"wall": s, "peak_mb": MB, "summary": run.json}`` or ``{"error": ...}``.

    ``args`` are the command's arguments after ``napari-cuts`` (``["segment", IMAGE,
    "--out", str(out), ...]``); ``out`` is that output folder."""
    code = (
        "import resource, json; from napari_cuts.cli import main; "
        f"rc = main({list(map(str, args))!r}); "
        "print(json.dumps({'rc': rc, 'maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or proc.returncode}
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall": wall, "peak_mb": round(stats["maxrss_kb"] / 1024, 1),
            "summary": json.loads((Path(out) / "run.json").read_text())}
