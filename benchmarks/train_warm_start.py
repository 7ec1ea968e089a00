"""Train the generic warm-start encoders shipped in ``src/napari_cuts/weights/``.

    .venv/bin/python benchmarks/train_warm_start.py rgb  [--seconds 480] [--seed 0]
    .venv/bin/python benchmarks/train_warm_start.py grey [--seconds 180] [--seed 0]

``rgb`` (3 channels, ``warm_rgb.pt``) trains one CUTS encoder (Table S1 network, the
package's default training options, no labels) on redistributable colour fundus
photographs only:

* ``sample_data/fundus.png`` (public domain / CC0, scikit-image ``data.retina()``),
  at 512 x 512 and at 256 x 256;
* the three HRF photographs in ``../shared/data/hrf`` (CC BY 4.0, Budai et al. 2013),
  2336 x 3504, downscaled with anti-aliasing by the pool factor that
  ``pipeline.plan`` gives them (6: 390 x 584, the grid the pipeline condenses on) and
  by 16 (146 x 219), so the filters see vessels and discs at several scales.

``grey`` (1 channel, ``warm_grey.pt``) trains on axial, coronal and sagittal slices of
the MNI ICBM152 2009a T1 template (``../shared/data/mni152``, permissive MNI notice).
The Decathlon sets (CC BY-SA 4.0) are left out on purpose: weights learnt from them
might have to carry the share-alike licence, which the package's BSD licence is not.

NEVER add ``../shared/data/retina`` here: its licence is non-commercial, it is for
evaluation only.

The run uses fixed seeds (numpy and torch); with a wall-time budget the number of
steps depends on the machine's load, so the step count is recorded in the weights'
metadata and in ``weights/README.md``. ``--epochs`` gives a machine-independent run.
The file is written with ``Encoder.save`` and its training history is dropped (it is
only a start point); its sha256 is printed and recorded by every fine-tune from it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _data_dir() -> Path:
    env = os.environ.get("NAPARI_CUTS_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def _resize(img: np.ndarray, shape) -> np.ndarray:
    from skimage.transform import resize

    out = resize(img, tuple(shape) + img.shape[2:], anti_aliasing=True, preserve_range=True)
    return out.astype(np.float32)


def rgb_images() -> tuple[list, list]:
    import imageio.v3 as iio

    from napari_cuts.pipeline import plan

    images, origin = [], []
    fundus = np.asarray(iio.imread(REPO / "sample_data" / "fundus.png"))[..., :3].astype(np.float32)
    images += [fundus, _resize(fundus, (256, 256))]
    origin.append("sample_data/fundus.png at 512 x 512 and 256 x 256 (CC0)")
    hrf = _data_dir() / "hrf"
    for name in ("01_h.jpg", "01_g.jpg", "01_dr.JPG"):
        im = np.asarray(iio.imread(hrf / name))[..., :3].astype(np.float32)
        h, w = im.shape[:2]
        pool = plan(im.shape).pool
        for f in (pool, 16):
            images.append(_resize(im, (round(h / f), round(w / f))))
        origin.append(f"HRF {name} {h} x {w}, downscaled by {pool} and 16 (CC BY 4.0)")
    return images, origin


def grey_images() -> tuple[list, list]:
    import nibabel as nib

    path = _data_dir() / "mni152" / "mni152_2009a_t1_1mm.nii.gz"
    vol = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    images = []
    for axis in range(3):
        n = vol.shape[axis]
        for frac in (0.35, 0.45, 0.5, 0.55, 0.65):
            images.append(np.take(vol, int(round(frac * (n - 1))), axis=axis))
    return images, [f"{path.name} {' x '.join(map(str, vol.shape))}: 5 slices along each "
                    "axis at 35-65 % (MNI notice)"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["rgb", "grey"])
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default src/napari_cuts/weights/warm_<kind>.pt")
    args = ap.parse_args(argv)

    import torch

    from napari_cuts.encoder import DEFAULTS, file_sha256, train_encoder

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    images, origin = rgb_images() if args.kind == "rgb" else grey_images()
    seconds = args.seconds
    if seconds is None and args.epochs is None:
        seconds = 480.0 if args.kind == "rgb" else 180.0
    out = Path(args.out) if args.out else REPO / "src" / "napari_cuts" / "weights" / f"warm_{args.kind}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)

    def progress(done, total, msg):
        if done % 200 == 0:
            print(msg, flush=True)

    enc = train_encoder(images, seconds=seconds, epochs=args.epochs, seed=args.seed,
                        device="cpu", progress=progress)
    hist = enc.metadata.pop("history")
    tail = {k: float(np.mean(v[-50:])) for k, v in hist.items() if v}
    enc.metadata.update({
        "warm_start_source": {
            "kind": args.kind, "data": origin,
            "command": "python benchmarks/train_warm_start.py " + " ".join(argv or sys.argv[1:]),
            "date": _dt.date.today().isoformat(), "final_losses": tail,
            "image_shapes": [list(im.shape) for im in images],
        }
    })
    enc.save(out)
    info = {"file": str(out), "sha256": file_sha256(out), "bytes": out.stat().st_size,
            "steps": enc.metadata["steps"], "seconds_used": round(enc.metadata["seconds_used"], 1),
            "epochs_done": round(enc.metadata["epochs_done"], 2), "final_losses": tail,
            "options": {k: DEFAULTS[k] for k in ("crop_size", "batch_size", "anchors", "lr",
                                                  "lam", "temperature", "dilations")},
            "data": origin}
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
