"""Train the generic warm-start encoders shipped in ``src/napari_cuts/weights/``.

    .venv/bin/python benchmarks/train_warm_start.py rgb  [--seconds 480] [--seed 0]
    .venv/bin/python benchmarks/train_warm_start.py grey [--seconds 180] [--seed 0]
    .venv/bin/python benchmarks/train_warm_start.py volume --epochs 3 [--seed 0]
    .venv/bin/python benchmarks/train_warm_start.py check-volume CASE.nii.gz [WEIGHTS.pt ...]

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

``volume`` (1 channel, ``warm_volume_grey.pt``) is the start point of the volume
encoder (``pipeline_volume.train_volume_encoder``): the same network trained on the
slices of volumes' working grids, built exactly as ``train_volume_encoder`` builds
them (``volume_grid``: per-volume percentile scaling and block means;
``volume_training_slices`` with ``k = volume.CONTEXT_SLICES`` neighbour slices as
channels, up to 64 slices a volume), so its channel layout and input scaling match. Its only
source is the MNI ICBM152 2009a T1 template shipped as ``sample_data/mri_volume.nii.gz``
(permissive MNI notice), plus copies derived from it deterministically (see
:func:`volume_images`): each of the three axes as the slicing direction, each at 1 mm
and with 3 mm slices (block means of 3 along the slicing axis, spacing 3 x 1 x 1 mm, the
grid the pipeline then plans), and one intensity variant of each (gamma 0.7, gamma
1.4 or Gaussian noise), 12 volumes in all.

The Decathlon sets (CC BY-SA 4.0) are left out on purpose: weights learnt from them
might have to carry the share-alike licence, which the package's BSD licence is not.

NEVER add ``../shared/data/retina`` here: its licence is non-commercial, it is for
evaluation only.

``check-volume`` trains the volume encoder for 60 steps (seed 0) on one volume from
scratch and from each given start point and prints the final losses: a cheap check that
a start point helps, on a volume that is never training data (e.g. a Decathlon case).

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


#: The intensity variant of each (slicing axis, slice thickness) copy of the MNI in
#: ``volume_images``: ("gamma", g) raises the [0, 1]-scaled intensities to the power g;
#: ("noise", s) adds Gaussian noise of s times the volume's 99.5th percentile.
VOLUME_VARIANTS = {(0, 1): ("gamma", 0.7), (1, 1): ("gamma", 1.4), (2, 1): ("noise", 0.04),
                   (0, 3): ("noise", 0.04), (1, 3): ("gamma", 0.7), (2, 3): ("gamma", 1.4)}


def _intensity_variant(vol: np.ndarray, variant, rng) -> np.ndarray:
    kind, value = variant
    hi = float(np.percentile(vol, 99.5))
    if kind == "gamma":
        return (np.clip(vol / hi, 0.0, None) ** float(value) * hi).astype(np.float32)
    noise = rng.normal(0.0, float(value) * hi, size=vol.shape).astype(np.float32)
    return (vol + noise).astype(np.float32)


def volume_images(context: int, seed: int = 0) -> tuple[list, list]:
    """Training slices of the volume start point: the MNI template and 11 copies
    derived from it, each through ``volume_grid`` and ``volume_training_slices``
    (``context`` neighbour slices as channels), the way ``train_volume_encoder`` makes
    them. Deterministic for a given ``seed`` (the noise copies)."""
    from napari_cuts.io.readers import read_image
    from napari_cuts.pipeline_volume import volume_grid, volume_training_slices
    from napari_cuts.volume import block_reduce

    path = REPO / "src" / "napari_cuts" / "sample_data" / "mri_volume.nii.gz"
    src = read_image(path)
    base = np.asarray(src.data, dtype=np.float32)
    base_sp = tuple(float(v) for v in src.spacing[:3])
    rng = np.random.default_rng(seed)
    images, origin = [], []
    for axis in range(3):
        for thick in (1, 3):
            vol = np.moveaxis(base, axis, 0)
            sp = (base_sp[axis],) + tuple(base_sp[a] for a in range(3) if a != axis)
            if thick > 1:   # thick slices: block means of `thick` slices along the slicing axis
                vol = block_reduce(vol, (thick, 1, 1))
                sp = (sp[0] * thick,) + sp[1:]
            vol = np.ascontiguousarray(vol)
            variant = VOLUME_VARIANTS[(axis, thick)]
            for v, name in ((vol, "as is"),
                            (_intensity_variant(vol, variant, rng), f"{variant[0]} {variant[1]:g}")):
                plan, grid = volume_grid(v, sp)
                sl = volume_training_slices(grid, context)
                images += sl
                origin.append(f"{path.name} sliced along axis {axis} of {' x '.join(map(str, base.shape))}, "
                              f"{sp[0]:g} mm slices ({' x '.join(map(str, vol.shape))}), {name}: grid "
                              f"{' x '.join(map(str, grid.shape[:3]))} (pools {list(plan.pools)}), "
                              f"{len(sl)} slices (MNI notice)")
    return images, origin


def check_volume(weights, case, steps: int = 60, seed: int = 0) -> dict:
    """The final training loss of ``steps`` steps of the volume encoder on one volume
    ``case`` (its training slices, as ``train_volume_encoder`` makes them), from scratch
    and from each start point in ``weights``; seed ``seed``. Evaluation only: ``case``
    is not training data of any start point."""
    import inspect

    from napari_cuts.encoder import train_encoder
    from napari_cuts.io.readers import read_image
    from napari_cuts.pipeline_volume import volume_grid, volume_training_slices
    from napari_cuts.volume import CONTEXT_SLICES

    k = CONTEXT_SLICES
    src = read_image(case)
    _, grid = volume_grid(src.data, src.spacing[:3])
    imgs = volume_training_slices(grid, k)
    budget = {}
    if "steps" in inspect.signature(train_encoder).parameters:
        budget["steps"] = int(steps)
    else:   # an epoch count giving exactly `steps` steps
        spe = train_encoder(imgs, epochs=1e-9, seed=seed, device="cpu",
                            context_slices=k).metadata["steps_per_epoch"]
        budget["epochs"] = (steps - 0.5) / spe
    rows = {}
    for init in [None, *weights]:
        enc = train_encoder(imgs, seed=seed, device="cpu", init=init, context_slices=k, **budget)
        loss = enc.metadata["history"]["loss"]
        rec = enc.metadata["history"]["reconstruction"]
        con = enc.metadata["history"]["contrastive"]
        rows["scratch" if init is None else Path(init).name] = {
            "steps": enc.metadata["steps"], "first_loss": round(loss[0], 4),
            "final_loss": round(loss[-1], 4), "mean_last10": round(float(np.mean(loss[-10:])), 4),
            "reconstruction_last10": round(float(np.mean(rec[-10:])), 5),
            "contrastive_last10": round(float(np.mean(con[-10:])), 3),
            "seconds": round(enc.metadata["seconds_used"], 1)}
    return {"case": str(case), "grid": list(grid.shape), "slices": len(imgs),
            "context_slices": k, "budget": budget, "seed": seed, "runs": rows}


def main(argv=None) -> int:
    if (argv if argv is not None else sys.argv[1:])[:1] == ["check-volume"]:
        ap = argparse.ArgumentParser(description=check_volume.__doc__.splitlines()[0])
        ap.add_argument("what")
        ap.add_argument("case")
        ap.add_argument("weights", nargs="*")
        ap.add_argument("--steps", type=int, default=60)
        ap.add_argument("--seed", type=int, default=0)
        a = ap.parse_args(argv)
        print(json.dumps(check_volume(a.weights, a.case, a.steps, a.seed), indent=1))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["rgb", "grey", "volume"])
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default src/napari_cuts/weights/warm_<kind>.pt")
    args = ap.parse_args(argv)

    import torch

    from napari_cuts.encoder import DEFAULTS, file_sha256, train_encoder

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    from napari_cuts.volume import CONTEXT_SLICES

    options = {}
    if args.kind == "volume":
        options["context_slices"] = CONTEXT_SLICES
        images, origin = volume_images(CONTEXT_SLICES, args.seed)
    else:
        images, origin = rgb_images() if args.kind == "rgb" else grey_images()
    seconds = args.seconds
    if seconds is None and args.epochs is None:
        if args.kind == "volume":
            args.epochs = 3.0
        else:
            seconds = 480.0 if args.kind == "rgb" else 180.0
    name = "warm_volume_grey.pt" if args.kind == "volume" else f"warm_{args.kind}.pt"
    out = Path(args.out) if args.out else REPO / "src" / "napari_cuts" / "weights" / name
    out.parent.mkdir(parents=True, exist_ok=True)

    def progress(done, total, msg):
        if done % 200 == 0:
            print(msg, flush=True)

    enc = train_encoder(images, seconds=seconds, epochs=args.epochs, seed=args.seed,
                        device="cpu", progress=progress, **options)
    if args.kind == "volume":   # as train_volume_encoder marks its encoders
        from napari_cuts.pipeline_volume import VOLUME_INPUT

        enc.metadata["volume"] = True
        enc.metadata["volume_input"] = VOLUME_INPUT
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
            "steps": enc.metadata["steps"], "steps_per_epoch": enc.metadata["steps_per_epoch"],
            "context_slices": enc.metadata.get("context_slices"), "seconds_used": round(enc.metadata["seconds_used"], 1),
            "epochs_done": round(enc.metadata["epochs_done"], 2), "final_losses": tail,
            "options": {k: DEFAULTS[k] for k in ("crop_size", "batch_size", "anchors", "lr",
                                                  "lam", "temperature", "dilations")},
            "data": origin}
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
