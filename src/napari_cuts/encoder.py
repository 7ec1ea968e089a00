"""The CUTS encoder: every name callers use, from the modules that hold them.

- :mod:`napari_cuts.encoder_network`: the network of the CUTS paper (Table S1), the
  reconstruction head, the device, :data:`DEFAULTS`; the one module that imports
  torch at module level;
- :mod:`napari_cuts.encoder_weights`: :class:`Encoder` (network + metadata), save
  and :func:`load_encoder`, the packaged warm-start weights, channel-count checks;
- :mod:`napari_cuts.encoder_training`: :func:`train_encoder` (sampling, SSIM checks,
  the loss, the budget, progress and cancel);
- :mod:`napari_cuts.encoder_embedding`: :func:`embed`, :func:`embed_volume`,
  :func:`normalised_image` (tiled, pooled, slice by slice).

Importing this module imports torch. Callers import these names from here inside
their functions, so a name replaced here (``monkeypatch.setattr(encoder,
"train_encoder", ...)``) is the one they get. Inside the four modules, names are read
where they are defined: ``_use_all_cores`` (which sets torch's CPU threads before
training and embedding) is looked up in :mod:`napari_cuts.encoder_network` on every
call, so that is where to replace it; it is not offered here.
"""

from __future__ import annotations

from .encoder_embedding import (
    _normalise,
    _prepare,
    _reads_as_volume,
    embed,
    embed_volume,
    normalised_image,
)
from .encoder_network import (
    CHANNELS,
    DEFAULTS,
    EMBEDDING_DIM,
    KERNEL,
    RECEPTIVE_MARGIN,
    _dilations,
    _Net,
    _ReconHead,
    receptive_margin,
    resolve_device,
)
from .encoder_training import (
    _check_options,
    _gather_patches,
    _norm_values,
    _nt_xent,
    _patch_ssim,
    _Sampler,
    train_encoder,
)
from .encoder_weights import (
    FORMAT,
    FORMAT_VERSION,
    MAX_INPUT_CHANNELS,
    PACKAGED_WEIGHTS,
    WEIGHTS_DIR,
    Encoder,
    _check_channels,
    _resolve_init,
    file_sha256,
    is_volume_encoder,
    load_encoder,
    packaged_weights,
)

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
