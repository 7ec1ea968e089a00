"""How long the encoder trains by default: a number of steps that follows the data.

A budget in seconds depends on the machine and on its load, so the same seed gave
different encoders (and masks) from one run to the next. The default budget is a
number of training steps, computed from the input before training starts (the
widget shows it), and training ends early when the loss has settled
(:func:`settled`). Both depend only on the data and the seed, so two runs give the
same encoder on one machine, and ``--steps N`` with the ``steps`` that ``run.json``
records replays a run.

The rule (:func:`default_steps`, measured in docs/decisions/0012):

* from a random initialisation it grows with the fourth root of the input's voxels
  (pixels for 2D images): a 70 k-voxel crop is not worth the steps of an 8 M-voxel
  brain, but the brain has more kinds of texture to learn than a crop;
* from packaged weights (:func:`napari_cuts.encoder.packaged_weights`) it is far
  smaller and does not grow with the size: fine-tuning needs a number of updates,
  whatever the image's size (on 128 x 128 fundus photographs the Dice kept rising
  from 10 to 45 steps);
* a quarter more per extra channel.
"""

from __future__ import annotations

import math
from typing import Sequence

#: Steps for a 512 x 512 single-channel image, by start point.
BASE_STEPS = {"scratch": 150, "warm": 30}
#: Voxels at which :data:`BASE_STEPS` applies (a 512 x 512 image).
BASE_VOXELS = 512 * 512
#: How the steps grow with the voxels, by start point: ``(voxels / BASE_VOXELS) ** k``.
SIZE_EXPONENT = {"scratch": 0.25, "warm": 0.0}
#: Never fewer or more steps than this by default.
MIN_STEPS, MAX_STEPS = 10, 600
#: The loss is compared over windows of this many steps ...
SETTLE_WINDOW = 20
#: ... and training stops once a window's mean loss is less than this fraction below
#: the previous window's (only after at least three windows).
SETTLE_TOLERANCE = 0.01


def default_steps(voxels: int, channels: int = 1, *, warm: bool = False) -> int:
    """The default training budget, in steps, for an input of ``voxels`` voxels (pixels
    of a 2D image; all slices of a volume or a stack) and ``channels`` channels,
    trained from the packaged weights (``warm``) or from scratch."""
    voxels = max(int(voxels), 1)
    channels = max(int(channels), 1)
    start = "warm" if warm else "scratch"
    steps = (BASE_STEPS[start] * (voxels / BASE_VOXELS) ** SIZE_EXPONENT[start]
             * (1.0 + 0.25 * (channels - 1)))
    return int(min(MAX_STEPS, max(MIN_STEPS, round(steps))))


def settled(losses: Sequence[float], window: int = SETTLE_WINDOW,
            tolerance: float = SETTLE_TOLERANCE) -> bool:
    """True when the loss has stopped falling: checked at multiples of ``window``
    steps, from the third window on, the last window's mean loss is less than
    ``tolerance`` (relative) below the window before it."""
    n = len(losses)
    if window < 1 or n < 3 * window or n % window:
        return False
    last = sum(losses[n - window:]) / window
    before = sum(losses[n - 2 * window:n - window]) / window
    return not (before - last) > tolerance * abs(before)


def steps_for(shapes: Sequence[Sequence[int]], *, ndim: int, warm: bool) -> int:
    """:func:`default_steps` for inputs of these shapes trained together: ``ndim``
    spatial axes first (2: ``(H, W[, C])`` images, what
    :func:`napari_cuts.pipeline.get_encoder` uses; 3: ``(Z, Y, X[, C])`` volumes, what
    :func:`napari_cuts.pipeline.train_volume_encoder` uses), then an optional channel
    axis."""
    shapes = [tuple(int(v) for v in s) for s in shapes]
    if not shapes:
        raise ValueError("no inputs")
    channels = shapes[0][ndim] if len(shapes[0]) > ndim else 1
    return default_steps(sum(math.prod(s[:ndim]) for s in shapes), channels, warm=warm)
