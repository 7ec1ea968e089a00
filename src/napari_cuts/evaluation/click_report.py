"""The numbers, table and figure of ``napari-cuts evaluate --clicks`` (see
:mod:`napari_cuts.evaluation.clicks`).

``results.json["clicks"]``::

    {"n": N,
     "methods": {name: {"dice_at": {"1", "3", "5", "10"},    # the mean curve (None past N)
                        "noc": {"80", "85", "90"},          # mean clicks to reach the Dice (N if never)
                        "never": {"80", "85", "90"},        # share of runs that never reach it
                        "largest_drop",                     # largest fall of the mean curve, k -> k+1
                        "seconds_per_click",                # mean time of a call, first calls left out
                        "mean_curve", "n_cases", "n_runs"}
                 or {"not_run": reason}},
     "cases": {case: {name: [Dice after 1 .. N clicks, mean over seeds]}},
     "per_seed": {case: {name: {seed: [..]}}},              # the seeded methods
     "click_sequences": {case: {name: {seed or "-": [[point, positive], ..]}}},
     "slic_size": {case: voxels per supervoxel of the curve kept},
     "seeds", "cases_order", "layout", "split", "training", "seconds", "notes", "not_run"}

A run is one (case, seed) of a seeded method and one case of the others; the mean
curve is the mean over cases of each case's curve (itself the mean over seeds).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

DICE_AT = ("1", "3", "5", "10")
THRESHOLDS = ("80", "85", "90")
#: Markers of the clicks section in OUT/results.md.
RESULTS_MD_MARKERS = ("<!-- clicks -->", "<!-- /clicks -->")


def _noc(curve, threshold: float, n: int) -> tuple[int, bool]:
    """(clicks to reach ``threshold``, capped at ``n``; whether it was reached)."""
    for k, d in enumerate(curve, start=1):
        if d >= threshold - 1e-12:
            return k, True
    return n, False


def summarise(by_case: dict, n: int) -> dict:
    """The ``methods`` entry of one method from ``{case: {seed or "-": run}}``."""
    runs = [r for per in by_case.values() for r in per.values()]
    case_curves = [np.mean([r["dice"] for r in per.values()], axis=0) for per in by_case.values()]
    mean = np.mean(case_curves, axis=0)
    secs = [s for r in runs for s in r["seconds"][1:]]
    drops = mean[:-1] - mean[1:]
    out = {
        "dice_at": {k: (float(mean[int(k) - 1]) if int(k) <= n else None) for k in DICE_AT},
        "noc": {}, "never": {},
        "largest_drop": float(max(0.0, drops.max())) if drops.size else 0.0,
        "seconds_per_click": float(np.mean(secs)) if secs else None,
        "mean_curve": [float(v) for v in mean],
        "n_cases": len(by_case), "n_runs": len(runs),
    }
    for t in THRESHOLDS:
        res = [_noc(r["dice"], int(t) / 100.0, n) for r in runs]
        out["noc"][t] = float(np.mean([k for k, _ in res]))
        out["never"][t] = float(np.mean([not ok for _, ok in res]))
    return out


def clicks_result(curves: dict, chosen, not_run: dict, *, n: int, seeds, notes, cases,
                  layout: str, split: str, training: dict, seconds: float) -> dict:
    """``results.json["clicks"]`` from ``curves`` (method -> case -> seed or "-" -> the
    run of :func:`napari_cuts.evaluation.clicks.simulate`)."""
    res = {"n": int(n), "methods": {}, "cases": {}, "per_seed": {}, "click_sequences": {},
           "slic_size": {}, "seeds": list(seeds), "cases_order": list(cases),
           "layout": layout, "split": split, "training": training,
           "seconds": round(float(seconds), 2), "notes": list(notes), "not_run": dict(not_run)}
    for m in chosen:
        if m in not_run:
            res["methods"][m] = {"not_run": not_run[m]}
            continue
        res["methods"][m] = summarise(curves[m], n)
        for case, per in curves[m].items():
            res["cases"].setdefault(case, {})[m] = [
                float(v) for v in np.mean([r["dice"] for r in per.values()], axis=0)]
            res["click_sequences"].setdefault(case, {})[m] = {k: r["clicks"] for k, r in per.items()}
            if "-" not in per:
                res["per_seed"].setdefault(case, {})[m] = {k: r["dice"] for k, r in per.items()}
            if m == "slic3d":
                res["slic_size"][case] = per["-"].get("size")
    return res


def _f(v, nd=3) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def table(clicks: dict) -> str:
    """The markdown table of the clicks evaluation (one row per method)."""
    n = clicks["n"]
    at = [k for k in DICE_AT if int(k) <= n] + ([] if str(n) in DICE_AT else [str(n)])
    head = (["method"] + [f"Dice@{k}" for k in at] + [f"NoC@{t}" for t in THRESHOLDS]
            + [f"never@{t}" for t in THRESHOLDS] + ["largest drop", "s / click", "cases"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, s in clicks["methods"].items():
        if "not_run" in s:
            lines.append(f"| {m} | not run ({s['not_run']}) |" + " |" * (len(head) - 2))
            continue
        row = ([m] + [_f(s["mean_curve"][int(k) - 1]) for k in at]
               + [f"{s['noc'][t]:.1f}" for t in THRESHOLDS]
               + [f"{s['never'][t]:.0%}" for t in THRESHOLDS]
               + [_f(s["largest_drop"]), _f(s["seconds_per_click"], 3), str(s["n_cases"])])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def section(clicks: dict, dataset: str) -> str:
    """The clicks section of results.md: what was run, the table, the notes."""
    cases = clicks["cases_order"]
    span = f"{cases[0]} .. {cases[-1]}" if len(cases) > 1 else (cases[0] if cases else "none")
    tr = clicks["training"]
    budget = (f"{tr['epochs']} epochs" if tr.get("epochs") is not None else
              f"{tr['seconds']:g} s" if tr.get("seconds") is not None else "the segment defaults")
    lines = [
        f"## Simulated user ({dataset}, {clicks['n']} clicks)", "",
        f"{len(cases)} cases ({clicks['split']} split: {span}); seeds "
        f"{', '.join(map(str, clicks['seeds']))} for the seeded methods; training: {budget}; "
        f"{clicks['seconds']:.0f} s in all.", "",
        "Click 1 positive at the innermost ground-truth voxel (distance in mm, the outside "
        "of the image as background); each next click at the innermost voxel of the largest "
        "fully connected error component (equal sizes: the lowest label, then a false "
        "negative before a false positive), positive on a false negative. Dice@k: the mean "
        "over cases after k clicks; NoC@t: mean clicks to reach Dice t/100 (N when never); "
        "never@t: share of runs that never reach it; largest drop: of the mean curve from "
        "one click to the next; s / click: the first call of each run left out.", "",
        table(clicks), ""]
    if clicks["notes"]:
        lines += ["Notes:", ""] + [f"- {x}" for x in clicks["notes"][:20]] + [""]
    return "\n".join(lines)


def replace_section(path: Path, start: str, end: str, body: str, title: str = "") -> None:
    """Write ``body`` between the lines ``start`` and ``end`` of the file ``path``,
    replacing what was there; the section is appended when missing, the file created
    (beginning with ``title``) when it does not exist."""
    from ..fileutil import atomic_path

    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else title
    block = f"{start}\n{body.rstrip()}\n{end}"
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    if i >= 0 and j >= 0:
        text = text[:i] + block + text[j + len(end):]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def git_commit() -> str:
    """``git rev-parse --short HEAD`` of the source checkout, or "unknown"."""
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, timeout=10, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"


def machine() -> str:
    """The platform and its CPUs, in words."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.platform()}, {os.cpu_count()} CPUs" + (f" ({cpu})" if cpu else "")


def figure(clicks: dict, path: Path) -> None:
    """``clicks.png``: the mean Dice against clicks, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fileutil import save_figure

    n = clicks["n"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for m, s in clicks["methods"].items():
        if "mean_curve" in s:
            ax.plot(range(1, n + 1), s["mean_curve"], marker="o", ms=3, label=m)
    ax.set_xlabel("clicks")
    ax.set_ylabel(f"Dice (mean over {len(clicks['cases_order'])} cases)")
    ax.set_xlim(0.5, n + 0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Simulated user: Dice after each click", fontsize=10)
    save_figure(fig, path)


def write_outputs(out: Path, clicks: dict, *, dataset: str, results_md=None,
                  command=None, commit=None) -> None:
    """``results.json`` (its ``clicks`` entry; the rest kept), ``clicks.png``, the clicks
    section of ``results.md``, and with ``results_md`` the dataset's section there
    (``commit``: the commit the run started from; by default the current one)."""
    from ..fileutil import write_json

    out = Path(out)
    res = {"methods": {}}
    if (out / "results.json").exists():
        try:
            old = json.loads((out / "results.json").read_text(encoding="utf-8"))
            res = old if isinstance(old, dict) else res
        except ValueError:
            pass
    res.setdefault("methods", {})
    res["clicks"] = clicks
    write_json(out / "results.json", res)
    figure(clicks, out / "clicks.png")
    body = section(clicks, dataset)
    replace_section(out / "results.md", *RESULTS_MD_MARKERS, body)
    if results_md is not None:
        import datetime

        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        cmd = command or "napari_cuts.evaluation.run_clicks_evaluation (Python API)"
        prov = (f"Written by `napari-cuts evaluate --clicks` on {when}.\n\n"
                f"- command: `{cmd}`\n- commit: {commit or git_commit()}\n- machine: {machine()}\n\n")
        replace_section(Path(results_md), f"<!-- evaluate-clicks:{dataset} -->",
                        f"<!-- /evaluate-clicks:{dataset} -->", prov + body,
                        title="# Benchmark results\n")
