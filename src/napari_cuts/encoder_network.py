"""The CUTS encoder's network: the architecture, the reconstruction head, the device.

The network is the one of the CUTS paper (Liu, Amodio et al., arXiv 2209.11359,
Table S1): four ``Conv2d 5x5 -> BatchNorm2d -> LeakyReLU`` blocks with 16, 32, 64
and 128 channels, ``padding='same'``, no pooling. An ``(H, W, C)`` image becomes an
``(H, W, 128)`` embedding; every output pixel sees a 17 x 17 neighbourhood (a margin
of 8 pixels). The reconstruction head is the small MLP that training uses to rebuild
the patch around a pixel from its embedding.

:data:`DEFAULTS` holds the options of the network (``dilations``, ``patch_size``) and
of its training (:func:`napari_cuts.encoder_training.train_encoder`).

This is the one napari_cuts module that imports torch at module level; the weights,
training and embedding modules import it, and this module, inside their functions.
"""

from __future__ import annotations

import os
from typing import Any, Optional

# How long an idle OpenMP worker spins before it sleeps, read by libgomp when torch
# loads it (so before the first ``import torch``). libgomp's default (300 000 spins)
# keeps torch's workers busy between operations; where the cores are shared (another
# job, the napari viewer), spinning workers take the time the working ones need: a
# training step on 2 busy cores took 2.4 s instead of 0.75 s (docs/decisions/0013).
# 1000 spins (tens of microseconds) still bridges the gap between consecutive
# operations. Scheduling only: the results do not change. A user's own
# OMP_WAIT_POLICY or GOMP_SPINCOUNT is kept.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import torch  # noqa: E402
from torch import nn

from .errors import InputError

#: Embedding size (Table S1).
EMBEDDING_DIM = 128
#: Channels of the four conv blocks (Table S1).
CHANNELS = (16, 32, 64, 128)
#: Kernel size of every conv (Table S1).
KERNEL = 5
#: Pixels each output depends on, either side: four 5x5 convs -> 4 * 2 = 8.
RECEPTIVE_MARGIN = len(CHANNELS) * (KERNEL // 2)

#: Default options of the network and its training (``train_encoder(**options)``
#: overrides them).
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
                nn.LeakyReLU(inplace=True),
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
