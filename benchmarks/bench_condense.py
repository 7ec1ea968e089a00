"""Benchmark of diffusion condensation: time, peak memory, scaling, slider speed, quality.

``run(quick=False) -> dict``::

    {"64": {"seconds", "peak_mb", "baseline_mb", "n_levels", "n_clusters"}, "128": ..,
     "256": .., "512": .., "exponent": .., "labels_ms_512": ..,
     "multiscale_phate_64": {"seconds", "peak_mb"} or {"error": ..},
     "speedup_vs_multiscale_phate_64": ..,
     "retina": {"n_images", "condense_best_dice", "condense_persistent_dice",
                "kmeans_dice", "kmeans_seconds", "condense_seconds", ...},
     "embeddings": "encoder" | "stand-in"}

Embeddings: a CUTS encoder trained briefly (``seconds=60``) on the retina development
images when they exist (``../shared/data/retina`` or ``$NAPARI_CUTS_RETINA``), else
on a bundled scikit-image photograph; 64 x 64 is a retina image resized, 128 x 128 a
retina image, 256/512 an HRF fundus photograph resized (or the photograph). With
``quick=True`` (or when torch/the encoder is unavailable) a stand-in feature map
(multi-scale Gaussian/gradient/texture filters projected to 128-d) replaces the
encoder and only 64 and 128 are run. Embeddings are cached in the temp folder.

Each size is condensed in a fresh subprocess; ``peak_mb`` is that process's peak RSS
(``ru_maxrss``, including Python, numpy and the input embeddings; ``baseline_mb`` is
the RSS just before the call). ``exponent`` is the slope of log(seconds) against
log(pixels). The reference ``multiscale_phate`` (knn=100 on L2-normalised embeddings,
as the CUTS code calls it) runs on the same 64 x 64 embeddings, in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("NAPARI_CUTS_DATA", HERE.parent.parent / "shared" / "data"))
CACHE = Path(tempfile.gettempdir()) / "napari_cuts_bench_condense"
TRAIN_SECONDS = 60.0


# ------------------------------------------------------------------ inputs
def _retina():
    """(images (N,128,128,3) uint8, masks (N,128,128)) or (None, None)."""
    root = Path(os.environ.get("NAPARI_CUTS_RETINA", DATA / "retina"))
    img_dir, lab_dir = root / "image_with_GA", root / "label_with_GA"
    if not img_dir.is_dir():
        return None, None
    from skimage.io import imread

    imgs, masks = [], []
    for f in sorted(img_dir.glob("image*.png"), key=lambda p: int(p.stem[5:])):
        lab = lab_dir / f"label{f.stem[5:]}.npy"
        if lab.exists():
            imgs.append(imread(f)[..., :3])
            masks.append(np.load(lab) > 0)
    if not imgs:
        return None, None
    return np.stack(imgs), np.stack(masks)


def _large_image():
    """An RGB fundus photograph (HRF) if present, else a bundled photograph."""
    from skimage import data as skdata
    from skimage.io import imread

    for name in ("01_h.jpg", "01_g.jpg", "01_dr.JPG"):
        p = DATA / "hrf" / name
        if p.exists():
            img = imread(p)[..., :3]
            h, w = img.shape[:2]
            s = min(h, w)
            return img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return skdata.astronaut()


def _resize(img, side):
    from skimage.transform import resize

    return (resize(img, (side, side), anti_aliasing=True, preserve_range=True)).astype(np.uint8)


def standin_embed(image, dim: int = 128, seed: int = 0) -> np.ndarray:
    """Stand-in per-pixel features (H, W, dim): multi-scale intensity/edge/texture filters
    (scikit-image) mixed by a fixed random projection and a tanh."""
    from skimage.feature import multiscale_basic_features

    img = np.asarray(image, dtype=np.float32)
    img = (img - img.min()) / max(1e-6, float(img.max() - img.min()))
    feats = multiscale_basic_features(img, channel_axis=-1 if img.ndim == 3 else None,
                                      sigma_min=0.5, sigma_max=8, num_sigma=5)
    f = feats.reshape(-1, feats.shape[-1])
    f = (f - f.mean(0)) / (f.std(0) + 1e-6)
    proj = np.random.default_rng(seed).normal(size=(f.shape[1], dim)) / np.sqrt(f.shape[1])
    return np.tanh(f @ proj).reshape(*img.shape[:2], dim).astype(np.float32)


def _embedder(quick: bool):
    """(embed function, kind). Trains (once, cached) a short encoder unless quick."""
    if quick:
        return standin_embed, "stand-in"
    try:
        from napari_cuts.encoder import embed, load_encoder, train_encoder
    except Exception:  # torch or the encoder unavailable
        return standin_embed, "stand-in"
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "encoder.pt"
    enc = None
    if path.exists():
        try:
            enc = load_encoder(path)
        except Exception:
            enc = None
    if enc is None:
        imgs, _ = _retina()
        if imgs is None:
            imgs = [_resize(_large_image(), 256)]
        enc = train_encoder(list(imgs), seconds=TRAIN_SECONDS, seed=0)
        try:
            enc.save(path)
        except Exception:
            pass
    return (lambda im: embed(enc, im)), "encoder"


def _cached(name: str, kind: str, fn) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    p = CACHE / f"{kind}_{name}.npy"
    if not p.exists():
        arr = np.asarray(fn(), dtype=np.float32)
        tmp = p.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, p)
    return p


# --------------------------------------------------------------- children
_CHILD = r"""
import json, resource, sys, time
import numpy as np
emb = np.load(sys.argv[1])
def rss_mb():
    with open('/proc/self/status') as fh:
        for line in fh:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    return float('nan')
mode = sys.argv[2]
base = rss_mb()
t0 = time.perf_counter()
if mode == 'condense':
    from napari_cuts.condensation import condense
    t0 = time.perf_counter()
    h = condense(emb, seed=0)
    sec = time.perf_counter() - t0
    out = {'n_levels': int(h.n_levels), 'n_clusters': [int(c) for c in h.n_clusters]}
    if len(sys.argv) > 3:
        ms = []
        for rep in range(3):
            for lv in range(h.n_levels):
                t = time.perf_counter(); h.labels(lv); ms.append((time.perf_counter() - t) * 1e3)
        out['labels_ms'] = float(np.median(ms)); out['labels_ms_max'] = float(np.max(ms))
        t = time.perf_counter(); h.persistent(); out['persistent_ms'] = (time.perf_counter() - t) * 1e3
else:
    import multiscale_phate
    from sklearn.preprocessing import normalize
    x = normalize(emb.reshape(-1, emb.shape[-1]), axis=1)
    t0 = time.perf_counter()
    op = multiscale_phate.Multiscale_PHATE(knn=100, random_state=0, n_jobs=1)
    op.fit(x)
    sec = time.perf_counter() - t0
    out = {'n_levels': int(len(op.levels))}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out.update({'seconds': sec, 'peak_mb': peak, 'baseline_mb': base})
print('RESULT ' + json.dumps(out))
"""


def _child(path: Path, mode: str, labels: bool = False, timeout: float = 900) -> dict:
    args = [sys.executable, "-c", _CHILD, str(path), mode] + (["labels"] if labels else [])
    try:
        cp = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in cp.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (cp.stderr or cp.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": tail[0][:300]}


def _ensure_multiscale_phate() -> str | None:
    try:
        import multiscale_phate  # noqa: F401
        return None
    except ImportError:
        pass
    cp = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "multiscale_phate"],
                        capture_output=True, text=True)
    if cp.returncode != 0:
        return "pip install multiscale_phate failed: " + (cp.stderr.strip().splitlines() or ["?"])[-1]
    return None


# ---------------------------------------------------------------- quality
def _retina_quality(embed_fn, kind: str, images, masks) -> dict:
    from napari_cuts.clustering import spectral_kmeans
    from napari_cuts.condensation import condense
    from napari_cuts.metrics import dice
    from napari_cuts.selection import label_hint

    best, pers, km, tc, tk, nl, best_k = [], [], [], [], [], [], []
    for i, (img, gt) in enumerate(zip(images, masks)):
        emb = np.load(_cached(f"retina{i}", kind, lambda: embed_fn(img)))
        t = time.perf_counter()
        h = condense(emb, seed=0)
        tc.append(time.perf_counter() - t)
        ds = [dice(label_hint(h.labels(lv), gt), gt) for lv in range(h.n_levels)]
        best.append(max(ds))
        best_k.append(int(h.n_clusters[int(np.argmax(ds))]))
        nl.append(h.n_levels)
        pers.append(dice(label_hint(h.persistent(), gt), gt))
        t = time.perf_counter()
        lab = spectral_kmeans(emb, k=10, seed=0)
        tk.append(time.perf_counter() - t)
        km.append(dice(label_hint(lab, gt), gt))
    return {
        "n_images": len(best),
        "condense_best_dice": float(np.mean(best)),
        "condense_persistent_dice": float(np.mean(pers)),
        "kmeans_dice": float(np.mean(km)),
        "condense_seconds": float(np.mean(tc)),
        "kmeans_seconds": float(np.mean(tk)),
        "mean_levels": float(np.mean(nl)),
        "median_best_level_clusters": float(np.median(best_k)),
    }


# -------------------------------------------------------------------- run
def run(quick: bool = False) -> dict:
    embed_fn, kind = _embedder(quick)
    images, masks = _retina()
    result: dict = {"embeddings": kind}
    if images is not None:
        small = {64: lambda: embed_fn(_resize(images[0], 64)), 128: lambda: embed_fn(images[0])}
    else:
        big = _large_image()
        small = {64: lambda: embed_fn(_resize(big, 64)), 128: lambda: embed_fn(_resize(big, 128))}
        result["note"] = "retina data absent: sizes 64/128 use a bundled photograph"
    sizes = [64, 128] if quick else [64, 128, 256, 512]
    paths = {}
    for s in sizes:
        fn = small.get(s) or (lambda s=s: embed_fn(_resize(_large_image(), s)))
        paths[s] = _cached(f"size{s}", kind, fn)
        res = _child(paths[s], "condense", labels=(s == max(sizes)))
        result[str(s)] = res
    ok = [s for s in sizes if "seconds" in result[str(s)]]
    if len(ok) >= 2:
        px = np.log([s * s for s in ok])
        sec = np.log([result[str(s)]["seconds"] for s in ok])
        result["exponent"] = float(np.polyfit(px, sec, 1)[0])
    top = str(max(sizes))
    if "labels_ms" in result[top]:
        result[f"labels_ms_{top}"] = result[top].pop("labels_ms")
        result[f"labels_ms_max_{top}"] = result[top].pop("labels_ms_max")
        result[f"persistent_ms_{top}"] = result[top].pop("persistent_ms")
    if not quick:
        err = _ensure_multiscale_phate()
        ms = {"error": err} if err else _child(paths[64], "msphate", timeout=1200)
        result["multiscale_phate_64"] = ms
        if "seconds" in ms and "seconds" in result["64"]:
            result["speedup_vs_multiscale_phate_64"] = ms["seconds"] / result["64"]["seconds"]
        if images is not None:
            result["retina"] = _retina_quality(embed_fn, kind, images, masks)
        else:
            result["retina"] = {"skipped": "retina development images not found"}
    return result


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
