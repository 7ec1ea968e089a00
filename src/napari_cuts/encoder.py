"""The CUTS encoder: network, fast training loop, tiled ``embed()``, save/load.

The network is the one of the CUTS paper (Liu, Amodio et al., arXiv 2209.11359,
Table S1): four ``Conv2d 5x5 -> BatchNorm2d -> LeakyReLU`` blocks with 16, 32, 64
and 128 channels, ``padding='same'``, no pooling. An ``(H, W, C)`` image becomes an
``(H, W, 128)`` embedding; every output pixel sees a 17 x 17 neighbourhood (a margin
of 8 pixels).

Training is unsupervised and uses the paper's two losses:

* **contrastive** (NT-Xent, cosine similarity / temperature): anchors are random
  pixels; each anchor's positive is a pixel within ``reach`` pixels whose 5 x 5
  patch passes an SSIM check (> ``ssim_threshold``) against the anchor's patch;
  the positives of the other anchors in the batch are its negatives;
* **reconstruction**: a small MLP head rebuilds the 5 x 5 x C patch around each
  anchor from its embedding (MSE).

``loss = lam * contrastive + (1 - lam) * reconstruction``.

Unlike the reference implementation (which loops over anchors in Python, computes
SSIM one pair at a time and convolves whole images for a handful of anchors) this
one trains on random crops with many anchors each, samples all anchors and
positive candidates at once, runs the SSIM check for all pairs as tensor ops and
gathers embeddings with one index: a training step on 8 crops of 64 x 64 with 256
anchors each takes a fraction of a second on a laptop CPU.

torch is imported only in this module.
"""

from __future__ import annotations

import json
import math
import os
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .errors import InputError, WeightsError
from .fileutil import atomic_path
from .images import Cancel, Progress, as_image_list, check_cancel, check_image, report

__all__ = [
    "Encoder",
    "train_encoder",
    "embed",
    "embed_volume",
    "load_encoder",
    "resolve_device",
    "packaged_weights",
    "file_sha256",
    "DEFAULTS",
    "RECEPTIVE_MARGIN",
]

#: Embedding size (Table S1).
EMBEDDING_DIM = 128
#: Channels of the four conv blocks (Table S1).
CHANNELS = (16, 32, 64, 128)
#: Kernel size of every conv (Table S1).
KERNEL = 5
#: Pixels each output depends on, either side: four 5x5 convs -> 4 * 2 = 8.
RECEPTIVE_MARGIN = len(CHANNELS) * (KERNEL // 2)
#: File format tag stored in saved weights.
FORMAT = "napari-cuts-encoder"
FORMAT_VERSION = 1
#: Channels an input slice may have (sequences or colours), before slice context.
MAX_INPUT_CHANNELS = 8
#: Generic warm-start weights shipped with the package, by input channel count
#: (written by benchmarks/train_warm_start.py; origin and licences in weights/README.md).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PACKAGED_WEIGHTS = {3: "warm_rgb.pt", 1: "warm_grey.pt"}

#: Default training options (``train_encoder(**options)`` overrides them).
#: Chosen by measurement on the development retina images and MRI slices; see the
#: module docs of ``benchmarks/bench_encoder.py`` and the project report.
DEFAULTS: dict[str, Any] = {
    "crop_size": 64,          # side of the random training crops (pixels)
    "batch_size": 8,          # crops per step
    "anchors": 256,           # anchors per crop
    "patch_size": 5,          # side of the SSIM / reconstruction patch
    "reach": 5,               # positives lie within this many pixels of the anchor
    "candidates": 4,          # positive candidates tried per anchor (first that passes)
    "ssim_threshold": 0.5,    # paper: positives need SSIM > 0.5
    "temperature": 0.1,       # NT-Xent temperature
    "lam": 0.01,              # loss = lam * contrastive + (1 - lam) * reconstruction
    "lr": 2e-3,               # AdamW peak learning rate
    "weight_decay": 1e-4,
    "warmup": 0.05,           # fraction of the run spent warming the lr up linearly
    "percentiles": (0.5, 99.5),  # robust per-channel normalisation
    "num_threads": None,      # torch CPU threads (None: all cores)
    "default_seconds": 60.0,  # budget when neither epochs nor seconds is given
    # 2.5D: the images are volume slices with this many neighbouring slices on each
    # side stacked as channels (napari_cuts.volume.context_stack); 0 for 2D images.
    # Recorded so that embedding a volume builds the same input.
    "context_slices": 0,
    # Dilation of each conv block: (1, 1, 1, 1) is Table S1 (17 x 17 view).
    "dilations": (1, 1, 1, 1),
}


# --------------------------------------------------------------------------- device


def resolve_device(device: str = "auto") -> str:
    """Return the torch device to use: ``"cuda"``, ``"mps"`` or ``"cpu"``.

    ``"auto"`` picks CUDA if available, then Apple MPS, then the CPU. Asking for a
    device that is not available raises :class:`InputError`.
    """
    dev = str(device).lower().strip()
    cuda_ok = torch.cuda.is_available()
    mps_ok = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if dev == "auto":
        return "cuda" if cuda_ok else ("mps" if mps_ok else "cpu")
    if dev == "cpu":
        return "cpu"
    if dev.startswith("cuda"):
        if not cuda_ok:
            raise InputError(f"device {device!r} was asked for but CUDA is not available "
                             "here; use device='auto' or 'cpu'.")
        return dev
    if dev == "mps":
        if not mps_ok:
            raise InputError("device 'mps' was asked for but Apple MPS is not available "
                             "here; use device='auto' or 'cpu'.")
        return "mps"
    raise InputError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'mps'.")


def _use_all_cores(num_threads: Optional[int] = None) -> None:
    n = int(num_threads) if num_threads else (os.cpu_count() or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(max(1, n))


# -------------------------------------------------------------------------- network


class _Net(nn.Module):
    """Table S1: 4 x [Conv2d 5x5 'same', BatchNorm2d, LeakyReLU], 16-32-64-128.

    ``dilations`` (one per block; Table S1 is all 1) widen what each output pixel sees
    without adding weights or compute: (1, 2, 4, 8) sees 61 x 61 pixels instead of 17 x 17."""

    def __init__(self, in_channels: int, dilations=(1, 1, 1, 1)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for ch, dil in zip(CHANNELS, dilations):
            layers += [
                nn.Conv2d(prev, ch, KERNEL, padding="same", dilation=int(dil)),
                nn.BatchNorm2d(ch),
                nn.LeakyReLU(),
            ]
            prev = ch
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 128, H, W)
        return self.layers(x)


class _ReconHead(nn.Module):
    """MLP rebuilding the patch_size x patch_size x C patch around a pixel from its embedding."""

    def __init__(self, in_channels: int, patch_size: int, hidden: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(EMBEDDING_DIM, hidden),
            nn.LeakyReLU(),
            nn.Linear(hidden, patch_size * patch_size * in_channels),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (M, 128) -> (M, P*P*C)
        return self.mlp(z)


class Encoder:
    """A trained CUTS encoder: the torch module plus its metadata.

    Attributes
    ----------
    in_channels : int
        Channels of the images it was trained on (1 grey, 3 RGB, ...).
    embedding_dim : int
        Size of the per-pixel embedding (128).
    metadata : dict
        JSON-serialisable: ``in_channels``, ``embedding_dim``, ``norm_low`` /
        ``norm_high`` (per-channel normalisation values), ``percentiles``,
        ``version``, ``seed``, ``params`` (training options), ``steps``,
        ``seconds``, ``history`` (per-step ``loss``, ``contrastive``,
        ``reconstruction``, ``positive_rate``).
    device : str
        Torch device the module lives on.
    """

    def __init__(self, net: _Net, head: Optional[_ReconHead], metadata: dict, device: str) -> None:
        self.net = net
        self.head = head
        self.metadata = metadata
        self.device = device
        self.net.eval()

    @property
    def in_channels(self) -> int:
        return int(self.metadata["in_channels"])

    @property
    def embedding_dim(self) -> int:
        return int(self.metadata["embedding_dim"])

    @property
    def history(self) -> dict:
        """Per-step loss terms of the training run (lists keyed by term)."""
        return self.metadata.get("history", {})

    def __repr__(self) -> str:
        return (f"Encoder(in_channels={self.in_channels}, embedding_dim={self.embedding_dim}, "
                f"steps={self.metadata.get('steps')}, device={self.device!r})")

    def to(self, device: str) -> "Encoder":
        """Move to another device (``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``)."""
        self.device = resolve_device(device)
        self.net.to(self.device)
        if self.head is not None:
            self.head.to(self.device)
        return self

    # ---------------------------------------------------------------- save/load

    def _state(self) -> dict:
        state: dict[str, Any] = {}
        for k, v in self.net.state_dict().items():
            state["net." + k] = v.detach().cpu().clone()
        if self.head is not None:
            for k, v in self.head.state_dict().items():
                state["head." + k] = v.detach().cpu().clone()
        return state

    def save(self, path) -> None:
        """Write weights + metadata to ``path`` atomically (temporary file, then rename).

        The file is a ``torch.save`` of a dict holding only tensors and strings (the
        metadata as a JSON string), readable with ``torch.load(weights_only=True)``.
        Raises :class:`WriteError` if it cannot be written.
        """
        path = Path(path)
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "metadata": json.dumps(self.metadata),
            "state": self._state(),
        }
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                torch.save(payload, fh)
                fh.flush()
                os.fsync(fh.fileno())


def load_encoder(path, device: str = "auto") -> Encoder:
    """Read an encoder saved by :meth:`Encoder.save`.

    Raises :class:`WeightsError` naming the file if it is missing, truncated,
    corrupt, not napari-cuts weights, or inconsistent with its own metadata.
    """
    path = Path(path)
    dev = resolve_device(device)
    if not path.is_file():
        raise WeightsError(f"encoder weights file {path} does not exist (or is not a file).")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile,
            UnicodeDecodeError, AttributeError, TypeError, IndexError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{path} is not readable napari-cuts encoder weights (truncated, "
                           f"corrupt or another kind of file: {msg[:200]}); train a new encoder "
                           "or give the right file.") from exc
    except Exception as exc:  # pickle.UnpicklingError and friends
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{path} is not napari-cuts encoder weights ({msg[:200]}); "
                           "train a new encoder or give the right file.") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightsError(f"{path} is a torch file but not napari-cuts encoder weights "
                           "(no 'napari-cuts-encoder' tag); train a new encoder or give the "
                           "file written by Encoder.save.")
    try:
        meta = json.loads(payload["metadata"])
        state = payload["state"]
        in_channels = int(meta["in_channels"])
        patch = int(meta.get("params", {}).get("patch_size", DEFAULTS["patch_size"]))
        net = _Net(in_channels, _dilations(meta.get("params", {}).get("dilations")))
        net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        head_state = {k[5:]: v for k, v in state.items() if k.startswith("head.")}
        head = None
        if head_state:
            head = _ReconHead(in_channels, patch)
            head.load_state_dict(head_state)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{path} holds napari-cuts weights that do not match their own "
                           f"metadata ({msg[:200]}); the file is damaged: train a new "
                           "encoder.") from exc
    meta.setdefault("embedding_dim", EMBEDDING_DIM)
    enc = Encoder(net, head, meta, "cpu")
    return enc.to(dev)


def packaged_weights(in_channels: int) -> Optional[Path]:
    """The packaged warm-start weights for ``in_channels``-channel 2D images (3: RGB,
    1: grey), or None where the package ships none for that channel count."""
    name = PACKAGED_WEIGHTS.get(int(in_channels))
    if name is None:
        return None
    path = WEIGHTS_DIR / name
    return path if path.is_file() else None


def file_sha256(path) -> str:
    """Hex sha256 of a file's bytes."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _resolve_init(init, in_channels: int, ctx: int, opts: dict, options: dict):
    """``(Encoder, origin dict)`` for ``train_encoder(init=...)``; ``init`` is a path or
    an Encoder. A channel count, slice context or dilations other than the images'
    raise :class:`WeightsError` (an explicit start point is never silently dropped)."""
    if isinstance(init, Encoder):
        src, origin = init, {"file": None, "sha256": None}
    else:
        path = Path(init)
        src = load_encoder(path, device="cpu")
        origin = {"file": path.name if path.parent == WEIGHTS_DIR else str(path),
                  "packaged": path.parent == WEIGHTS_DIR, "sha256": file_sha256(path)}
    what = origin["file"] or "the initial encoder"
    if src.in_channels != in_channels:
        raise WeightsError(
            f"cannot start training from {what}: it was trained on {src.in_channels}-channel "
            f"images, these have {in_channels}; train from scratch (warm_start=False / "
            "--no-warm-start) or give weights of the same channel count.")
    src_ctx = int(src.metadata.get("context_slices", 0) or 0)
    if src_ctx != ctx:
        raise WeightsError(f"cannot start training from {what}: it uses {src_ctx} context "
                           f"slices, this training {ctx}.")
    src_dil = list(_dilations(src.metadata.get("params", {}).get("dilations")))
    if "dilations" not in options:
        opts["dilations"] = src_dil
    elif list(opts["dilations"]) != src_dil:
        raise WeightsError(f"cannot start training from {what}: its dilations {src_dil} "
                           f"differ from the asked {list(opts['dilations'])}.")
    origin.update({"steps": src.metadata.get("steps"), "seed": src.metadata.get("seed"),
                   "seconds_used": src.metadata.get("seconds_used"),
                   "n_images": src.metadata.get("n_images")})
    return src, origin


# -------------------------------------------------------------------- normalisation


def _norm_values(images: list[np.ndarray], percentiles) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (low, high) percentiles over the whole stack, shape (C,) each."""
    c = images[0].shape[-1]
    total = sum(im.shape[0] * im.shape[1] for im in images)
    # subsample huge stacks: percentiles of ~4M values are plenty
    step = max(1, int(math.ceil(total / 4_000_000)))
    flat = np.concatenate([im.reshape(-1, c)[::step] for im in images], axis=0)
    lo = np.percentile(flat, percentiles[0], axis=0).astype(np.float64)
    hi = np.percentile(flat, percentiles[1], axis=0).astype(np.float64)
    # a channel whose percentiles coincide (mostly constant): fall back to min/max
    for ch in range(c):
        if not hi[ch] > lo[ch]:
            lo[ch], hi[ch] = float(flat[:, ch].min()), float(flat[:, ch].max())
        if not hi[ch] > lo[ch]:
            hi[ch] = lo[ch] + 1.0
    return lo, hi


def _normalise(image: np.ndarray, lo, hi) -> np.ndarray:
    """float32 (H, W, C) -> float32 (C, H, W) in [0, 1] (clipped)."""
    lo = np.asarray(lo, np.float32)
    hi = np.asarray(hi, np.float32)
    out = (image - lo) / (hi - lo)
    np.clip(out, 0.0, 1.0, out=out)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


# ---------------------------------------------------------------------- loss pieces


def _patch_ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM of patch pairs, vectorised.

    ``a``, ``b``: (..., C, P*P). One SSIM window covering the whole patch, sample
    (co)variances (N - 1), constants K1 = 0.01, K2 = 0.03, averaged over channels:
    the value ``skimage.metrics.structural_similarity(pa, pb, win_size=P,
    data_range=1, channel_axis=-1)`` gives for one P x P patch pair.
    """
    n = a.shape[-1]
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    ma = a.mean(-1)
    mb = b.mean(-1)
    da = a - ma[..., None]
    db = b - mb[..., None]
    va = (da * da).sum(-1) / (n - 1)
    vb = (db * db).sum(-1) / (n - 1)
    cov = (da * db).sum(-1) / (n - 1)
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return s.mean(-1)


def _nt_xent(za: torch.Tensor, zp: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric NT-Xent: row i of ``za`` must pick row i of ``zp`` among all rows.

    za, zp: (M, D). Cosine similarity / temperature; the other rows' positives are
    the negatives.
    """
    za = F.normalize(za, dim=1)
    zp = F.normalize(zp, dim=1)
    logits = za @ zp.t() / temperature
    target = torch.arange(za.shape[0], device=za.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class _Sampler:
    """Draws crops, anchors and positive candidates (numpy RNG, all at once)."""

    def __init__(self, stack: list[np.ndarray], opts: dict, rng: np.random.Generator) -> None:
        self.stack = stack  # normalised (C, H, W) float32 arrays
        self.rng = rng
        min_side = min(min(im.shape[1:]) for im in stack)
        self.crop = int(min(opts["crop_size"], min_side))
        half = opts["patch_size"] // 2
        # reach may not exceed what the crop allows around an anchor
        self.reach = int(max(1, min(opts["reach"], (self.crop - 1) // 2 - half - 1)))
        self.margin = half + self.reach
        self.batch = int(opts["batch_size"])
        self.anchors = int(opts["anchors"])
        self.cands = int(opts["candidates"])
        sizes = np.array([im.shape[1] * im.shape[2] for im in stack], np.float64)
        self.p = sizes / sizes.sum()
        offs = [(dy, dx) for dy in range(-self.reach, self.reach + 1)
                for dx in range(-self.reach, self.reach + 1) if (dy, dx) != (0, 0)]
        self.offsets = np.array(offs, np.int64)

    def crops(self) -> np.ndarray:
        """(B, C, S, S) float32 crops, images drawn proportionally to their area."""
        s = self.crop
        idx = self.rng.choice(len(self.stack), size=self.batch, p=self.p)
        out = []
        for i in idx:
            im = self.stack[i]
            y = int(self.rng.integers(0, im.shape[1] - s + 1))
            x = int(self.rng.integers(0, im.shape[2] - s + 1))
            out.append(im[:, y:y + s, x:x + s])
        return np.stack(out)

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Anchor coords (B, A) y, x and candidate positive coords (B, A, K) y, x."""
        b, a, k, m, s = self.batch, self.anchors, self.cands, self.margin, self.crop
        ay = self.rng.integers(m, s - m, size=(b, a))
        ax = self.rng.integers(m, s - m, size=(b, a))
        pick = self.rng.integers(0, len(self.offsets), size=(b, a, k))
        off = self.offsets[pick]
        py = ay[..., None] + off[..., 0]
        px = ax[..., None] + off[..., 1]
        return ay, ax, py, px


def _gather_patches(x: torch.Tensor, bi: torch.Tensor, y: torch.Tensor, xx: torch.Tensor,
                    dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Patches around points: x (B, C, S, S), bi/y/xx (...) -> (..., C, P*P)."""
    pat = x[bi[..., None], :, y[..., None] + dy, xx[..., None] + dx]  # (..., P*P, C)
    return pat.transpose(-1, -2)


# ------------------------------------------------------------------------- training


def _check_options(options: dict) -> dict:
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise InputError(f"unknown training option(s) {sorted(unknown)}; known: "
                         f"{sorted(DEFAULTS)}.")
    opts = {**DEFAULTS, **options}
    for key in ("crop_size", "batch_size", "anchors", "patch_size", "reach", "candidates"):
        if int(opts[key]) < 1:
            raise InputError(f"training option {key} must be a positive integer, got {opts[key]!r}.")
        opts[key] = int(opts[key])
    if opts["patch_size"] % 2 == 0:
        raise InputError(f"patch_size must be odd, got {opts['patch_size']}.")
    if not 0.0 <= float(opts["lam"]) <= 1.0:
        raise InputError(f"lam must lie in [0, 1], got {opts['lam']!r}.")
    if not float(opts["temperature"]) > 0:
        raise InputError(f"temperature must be > 0, got {opts['temperature']!r}.")
    if not float(opts["lr"]) > 0:
        raise InputError(f"lr must be > 0, got {opts['lr']!r}.")
    lo, hi = opts["percentiles"]
    if not 0.0 <= float(lo) < float(hi) <= 100.0:
        raise InputError(f"percentiles must be (low, high) with 0 <= low < high <= 100, "
                         f"got {opts['percentiles']!r}.")
    opts["percentiles"] = [float(lo), float(hi)]
    opts["dilations"] = list(_dilations(opts["dilations"]))
    return opts


def _dilations(value) -> tuple[int, ...]:
    """Validated per-block dilations (None: Table S1's all ones)."""
    if value is None:
        return (1,) * len(CHANNELS)
    try:
        dil = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"dilations must be {len(CHANNELS)} positive integers, got {value!r}.") from None
    if len(dil) != len(CHANNELS) or min(dil) < 1:
        raise InputError(f"dilations must be {len(CHANNELS)} positive integers, got {value!r}.")
    return dil


def receptive_margin(encoder=None) -> int:
    """Pixels each output depends on, either side (8 for Table S1)."""
    dil = _dilations(None if encoder is None else encoder.metadata.get("params", {}).get("dilations"))
    return int(sum(d * (KERNEL // 2) for d in dil))


def train_encoder(images, *, epochs: Optional[float] = None, seconds: Optional[float] = None,
                  seed: int = 0, device: str = "auto", progress: Progress = None,
                  cancel: Cancel = None, init=None, **options) -> Encoder:
    """Train a CUTS encoder on a stack of 2D images, without labels.

    Parameters
    ----------
    images : sequence of (H, W) / (H, W, C) arrays, or one array (N, H, W[, C])
        Any size (each at least 17 x 17), uint8/uint16/int/float; all with the same
        channel count. Normalised per channel to the (0.5, 99.5) percentiles of the
        whole stack (recorded in the metadata and reused by :func:`embed`).
    epochs : float, optional
        Passes over the data; one epoch is ``sum(H * W) / crop_size**2`` crops.
    seconds : float, optional
        Wall-time budget. With both, training stops at whichever comes first; with
        neither, ``seconds = DEFAULTS["default_seconds"]`` (60 s).
    seed : int
        Seeds torch and numpy: the same seed and ``epochs`` give identical weights on
        the CPU (a ``seconds`` budget makes the step count depend on the machine).
    device : "auto" | "cpu" | "cuda" | "mps"
    progress : callable(step, total, message), optional
        Called every few steps; the message holds the loss terms.
    cancel : callable() -> bool, optional
        Checked every step; when it returns True, :class:`Cancelled` is raised.
    init : path or Encoder, optional
        Warm start: begin from these weights (network and reconstruction head, e.g.
        :func:`packaged_weights`) instead of a random initialisation, then train as
        usual on ``images`` (normalised with their own percentiles). A channel count,
        slice context or dilations other than the images' raise :class:`WeightsError`.
        ``metadata["warm_start"]`` records the origin (file, sha256) or None.
    **options
        Overrides of :data:`DEFAULTS` (crop_size, batch_size, anchors, temperature,
        lam, lr, ...). Unknown names raise :class:`InputError`.

    Returns
    -------
    Encoder
        In eval mode; ``encoder.metadata["history"]`` holds the per-step losses.
    """
    opts = _check_options(options)
    ctx = int(opts["context_slices"])
    if ctx < 0:
        raise InputError(f"context_slices must be >= 0, got {ctx}.")
    stack = as_image_list(images, max_channels=MAX_INPUT_CHANNELS * (2 * ctx + 1))
    if epochs is not None and not float(epochs) > 0:
        raise InputError(f"epochs must be > 0, got {epochs!r}.")
    if seconds is not None and not float(seconds) > 0:
        raise InputError(f"seconds must be > 0, got {seconds!r}.")
    if epochs is None and seconds is None:
        seconds = float(opts["default_seconds"])
    dev = resolve_device(device)
    _use_all_cores(opts["num_threads"])

    in_channels = stack[0].shape[-1]
    lo, hi = _norm_values(stack, opts["percentiles"])
    normed = [_normalise(im, lo, hi) for im in stack]

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    sampler = _Sampler(normed, opts, rng)
    s = sampler.crop
    crops_per_epoch = sum(im.shape[1] * im.shape[2] for im in normed) / float(s * s)
    steps_per_epoch = max(1, int(math.ceil(crops_per_epoch / sampler.batch)))
    max_steps = int(math.ceil(float(epochs) * steps_per_epoch)) if epochs is not None else None

    start, origin = (None, None)
    if init is not None:
        start, origin = _resolve_init(init, in_channels, ctx, opts, options)
    net = _Net(in_channels, opts["dilations"]).to(dev)
    head = _ReconHead(in_channels, opts["patch_size"]).to(dev)
    if start is not None:
        net.load_state_dict(start.net.state_dict())
        if start.head is not None and int(start.metadata.get("params", {}).get(
                "patch_size", DEFAULTS["patch_size"])) == opts["patch_size"]:
            head.load_state_dict(start.head.state_dict())
            origin["head"] = True
        else:
            origin["head"] = False   # another patch size: a fresh head
        net.to(dev)
        head.to(dev)
    params = list(net.parameters()) + list(head.parameters())
    optim = torch.optim.AdamW(params, lr=opts["lr"], weight_decay=opts["weight_decay"])
    net.train()
    head.train()

    p = opts["patch_size"]
    half = p // 2
    grid = torch.arange(-half, half + 1)
    dy = grid.repeat_interleave(p).to(dev)  # (P*P,) row-major patch offsets
    dx = grid.repeat(p).to(dev)
    lam = float(opts["lam"])
    tau = float(opts["temperature"])
    thr = float(opts["ssim_threshold"])
    warm = float(opts["warmup"])

    hist: dict[str, list] = {"loss": [], "contrastive": [], "reconstruction": [],
                             "positive_rate": []}
    t0 = time.perf_counter()
    step = 0
    frac = 0.0
    while True:
        check_cancel(cancel)
        elapsed = time.perf_counter() - t0
        fr_steps = step / max_steps if max_steps else 0.0
        fr_time = elapsed / float(seconds) if seconds is not None else 0.0
        frac = max(fr_steps, fr_time)
        if frac >= 1.0:
            break
        # warm-up then cosine decay, driven by the fraction of the budget used
        lr_scale = min(1.0, (frac + 1e-9) / warm) if warm > 0 else 1.0
        lr_scale *= 0.5 * (1.0 + math.cos(math.pi * frac))
        for g in optim.param_groups:
            g["lr"] = opts["lr"] * max(lr_scale, 1e-3)

        x = torch.from_numpy(sampler.crops()).to(dev)
        ay, ax, py, px = (torch.from_numpy(v).to(dev) for v in sampler.points())
        bsz, na = ay.shape
        bi = torch.arange(bsz, device=dev)[:, None].expand(bsz, na)

        with torch.no_grad():
            pa = _gather_patches(x, bi, ay, ax, dy, dx)                    # (B, A, C, PP)
            pc = _gather_patches(x, bi[..., None].expand_as(py), py, px, dy, dx)  # (B,A,K,C,PP)
            ok = _patch_ssim(pa[:, :, None], pc) > thr                     # (B, A, K)
            has = ok.any(-1)                                               # (B, A)
            first = ok.float().argmax(-1)                                  # first passing
            pos_y = torch.gather(py, 2, first[..., None])[..., 0]
            pos_x = torch.gather(px, 2, first[..., None])[..., 0]

        z = net(x)                                                         # (B, D, S, S)
        za = z[bi, :, ay, ax]                                              # (B, A, D)
        zp = z[bi, :, pos_y, pos_x]
        rec = head(za.reshape(-1, za.shape[-1]))
        rec_loss = F.mse_loss(rec, pa.reshape(rec.shape))
        sel = has.reshape(-1)
        n_pos = int(sel.sum())
        if n_pos >= 2 and lam > 0:
            con_loss = _nt_xent(za.reshape(-1, za.shape[-1])[sel],
                                zp.reshape(-1, zp.shape[-1])[sel], tau)
        else:
            con_loss = torch.zeros((), device=dev)
        loss = lam * con_loss + (1.0 - lam) * rec_loss

        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        step += 1

        lv, cv, rv = float(loss.detach()), float(con_loss.detach()), float(rec_loss.detach())
        hist["loss"].append(lv)
        hist["contrastive"].append(cv)
        hist["reconstruction"].append(rv)
        hist["positive_rate"].append(n_pos / float(sel.numel()))
        if progress is not None:
            elapsed = time.perf_counter() - t0
            if max_steps is not None:
                total = max_steps
            else:
                total = step
            if seconds is not None:
                est = int(math.ceil(step * float(seconds) / max(elapsed, 1e-9)))
                total = min(total, est) if max_steps is not None else est
            total = max(total, step)
            report(progress, step, total,
                   f"step {step}/{total}: loss {lv:.4g} (contrastive {cv:.4g}, "
                   f"reconstruction {rv:.4g})")

    net.eval()
    head.eval()
    elapsed = time.perf_counter() - t0
    meta = {
        "format": FORMAT,
        "in_channels": int(in_channels),
        "embedding_dim": EMBEDDING_DIM,
        "context_slices": ctx,
        "norm_low": [float(v) for v in lo],
        "norm_high": [float(v) for v in hi],
        "percentiles": opts["percentiles"],
        "version": __version__,
        "seed": int(seed),
        "device": dev,
        "params": {**opts, "epochs": epochs, "seconds": seconds, "crop_used": s,
                   "reach_used": sampler.reach},
        "steps": step,
        "steps_per_epoch": steps_per_epoch,
        "epochs_done": step / steps_per_epoch,
        "seconds_used": elapsed,
        "n_images": len(stack),
        "warm_start": origin,
        "history": hist,
    }
    return Encoder(net, head, meta, dev)


# -------------------------------------------------------------------------- embedding


def _prepare(encoder: Encoder, image, name: str = "image", allow_constant: bool = False) -> np.ndarray:
    img = check_image(image, name, max_channels=max(MAX_INPUT_CHANNELS, encoder.in_channels),
                      allow_constant=allow_constant)
    c = img.shape[-1]
    if c != encoder.in_channels:
        def kind(n: int) -> str:
            return {1: " (grey)", 3: " (RGB)", 4: " (RGBA)"}.get(n, "")
        raise WeightsError(
            f"encoder was trained on {encoder.in_channels}-channel{kind(encoder.in_channels)} "
            f"images, this image has {c} channel{'s' if c != 1 else ''}; train a new encoder "
            "or load matching weights.")
    return _normalise(img, encoder.metadata["norm_low"], encoder.metadata["norm_high"])


def normalised_image(encoder: Encoder, image, allow_constant: bool = False) -> np.ndarray:
    """The image as the encoder sees it: ``(H, W, C)`` float32 scaled by the recorded
    percentiles into [0, 1]. Raises :class:`WeightsError` for another channel count."""
    return np.ascontiguousarray(
        np.moveaxis(np.asarray(_prepare(encoder, image, allow_constant=allow_constant)), 0, -1),
        dtype=np.float32)


def embed(encoder: Encoder, image, *, pool: int = 1, batch_tiles: int = 4,
          tile_size: int = 256, progress: Progress = None, cancel: Cancel = None,
          _slice: bool = False) -> np.ndarray:
    """Per-pixel embeddings of one image.

    Parameters
    ----------
    encoder : Encoder
    image : (H, W) or (H, W, C) array, C equal to ``encoder.in_channels``
        Normalised with the percentiles recorded at training time.
    pool : int
        1: full resolution. k > 1: means over k x k blocks (aligned at the top-left
        corner, edge blocks averaged over the pixels they hold), shape
        ``(ceil(H/k), ceil(W/k), D)``, computed tile by tile so the full-resolution
        embedding never exists in memory.
    batch_tiles : int
        Tiles per forward pass.
    tile_size : int
        Side of the tiles (rounded up to a multiple of ``pool``). Each tile is run
        with an 8-pixel overlap (the receptive-field margin), so the result equals
        the untiled one up to float rounding.
    progress, cancel : the usual hooks (one step per tile).

    Returns
    -------
    np.ndarray
        float32 ``(H, W, D)`` (``D = encoder.embedding_dim = 128``), or pooled as above.
        With a 2.5D encoder (trained on a volume), ``image`` is a volume ``(Z, Y, X[, C])``
        and the result ``(Z, Y, X, D)`` (:func:`embed_volume`).
    """
    if not _slice and _reads_as_volume(encoder, image):
        # a 2.5D encoder only reads volumes: (Z, Y, X[, C]) -> (Z, Y, X, D)
        if pool != 1:
            raise InputError("pool is not supported for volumes; segment_volume chooses the grid.")
        return embed_volume(encoder, image, progress=progress, cancel=cancel)
    pool = int(pool)
    if pool < 1:
        raise InputError(f"pool must be a positive integer, got {pool}.")
    x = _prepare(encoder, image, allow_constant=_slice)  # a volume's edge slice may be empty
    _, h, w = x.shape
    tile = max(int(tile_size), 1)
    tile = int(math.ceil(tile / pool) * pool)
    m = receptive_margin(encoder)
    d = encoder.embedding_dim
    oh, ow = -(-h // pool), -(-w // pool)
    out = np.empty((oh, ow, d), np.float32)
    if encoder.device == "cpu":
        _use_all_cores(None)

    # tiles: (y0, y1, x0, x1) output windows; inputs are widened by the margin
    tiles = [(y0, min(y0 + tile, h), x0, min(x0 + tile, w))
             for y0 in range(0, h, tile) for x0 in range(0, w, tile)]
    groups: dict[tuple, list] = {}
    for t in tiles:
        y0, y1, x0, x1 = t
        iy0, iy1, ix0, ix1 = max(0, y0 - m), min(h, y1 + m), max(0, x0 - m), min(w, x1 + m)
        groups.setdefault((iy1 - iy0, ix1 - ix0), []).append((t, (iy0, iy1, ix0, ix1)))
    net = encoder.net
    net.eval()
    done = 0
    total = len(tiles)
    bt = max(1, int(batch_tiles))
    with torch.inference_mode():
        for _, items in groups.items():
            for k in range(0, len(items), bt):
                check_cancel(cancel)
                chunk = items[k:k + bt]
                inp = np.stack([x[:, a:b, c:e] for _, (a, b, c, e) in chunk])
                z = net(torch.from_numpy(inp).to(encoder.device))
                z = z.permute(0, 2, 3, 1)
                for j, ((y0, y1, x0, x1), (iy0, _, ix0, _)) in enumerate(chunk):
                    zt = z[j, y0 - iy0:y1 - iy0, x0 - ix0:x1 - ix0]
                    if pool == 1:
                        out[y0:y1, x0:x1] = zt.float().cpu().numpy()
                    else:
                        th, tw = y1 - y0, x1 - x0
                        bh, bw = -(-th // pool), -(-tw // pool)
                        pad_h, pad_w = bh * pool - th, bw * pool - tw
                        zt = zt.permute(2, 0, 1)[None]                     # (1, D, th, tw)
                        if pad_h or pad_w:
                            zt = F.pad(zt, (0, pad_w, 0, pad_h))
                        ones = torch.ones((1, 1, th, tw), device=zt.device, dtype=zt.dtype)
                        if pad_h or pad_w:
                            ones = F.pad(ones, (0, pad_w, 0, pad_h))
                        sums = F.avg_pool2d(zt, pool, stride=pool) * (pool * pool)
                        cnt = F.avg_pool2d(ones, pool, stride=pool) * (pool * pool)
                        blk = (sums / cnt)[0].permute(1, 2, 0)
                        out[y0 // pool:y0 // pool + bh, x0 // pool:x0 // pool + bw] = \
                            blk.float().cpu().numpy()
                    done += 1
                report(progress, done, total, f"embedding tile {done}/{total}")
    return out


def is_volume_encoder(encoder: Encoder) -> bool:
    """True for an encoder trained on volumes (``train_volume_encoder``: 2D on slices, or
    2.5D with neighbour slices as channels)."""
    return bool(encoder.metadata.get("volume")) or int(encoder.metadata.get("context_slices", 0) or 0) > 0


def _reads_as_volume(encoder: Encoder, image) -> bool:
    """Whether ``embed`` takes ``image`` as a volume: always for a 2.5D encoder; for a
    volume-trained 2D encoder when the array has three spatial axes (plus channels)."""
    if int(encoder.metadata.get("context_slices", 0) or 0) > 0:
        return True
    if not encoder.metadata.get("volume"):
        return False
    nd = np.ndim(image)
    return nd == 3 + (1 if encoder.in_channels > 1 else 0)


def embed_volume(encoder: Encoder, volume, *, progress: Progress = None,
                 cancel: Cancel = None) -> np.ndarray:
    """Per-voxel embeddings of a volume ``(Z, Y, X)`` or ``(Z, Y, X, C)``: ``(Z, Y, X, D)``.

    A 2.5D encoder (``context_slices = k > 0``) gets every slice with its ``k``
    neighbours on each side as channels (:func:`napari_cuts.volume.context_stack`);
    a 2D encoder is applied to every slice on its own. Slices are embedded one by one,
    so memory holds the output and one slice's activations."""
    from .volume import check_volume, context_stack

    vol = check_volume(volume)
    k = int(encoder.metadata.get("context_slices", 0) or 0)
    x = context_stack(vol, k) if k else vol
    if x.shape[-1] != encoder.in_channels:
        per = encoder.in_channels // (2 * k + 1)
        raise WeightsError(
            f"the encoder was trained on volumes of {per} channel{'s' if per != 1 else ''} "
            f"(sequences){' with ' + str(k) + ' context slices each side' if k else ''}; this "
            f"volume has {vol.shape[-1]}: train a new encoder on these sequences or load "
            "weights trained on the same number.")
    z = x.shape[0]
    out = np.empty(x.shape[:3] + (encoder.embedding_dim,), np.float32)
    for i in range(z):
        check_cancel(cancel)
        out[i] = embed(encoder, x[i], cancel=cancel, _slice=True)
        report(progress, i + 1, z, f"embedding slice {i + 1}/{z}")
    return out
