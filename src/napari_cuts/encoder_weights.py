"""The encoder's weights: the :class:`Encoder` (network + metadata), save and load,
the packaged warm-start weights, and the checks that an encoder fits its input's
channel count.

A saved file is a ``torch.save`` of a dict holding only tensors and strings (the
metadata as a JSON string), readable with ``torch.load(weights_only=True)``. torch
and the network (:mod:`napari_cuts.encoder_network`) are imported inside the
functions that need them.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .errors import WeightsError
from .fileutil import atomic_path

if TYPE_CHECKING:
    from .encoder_network import _Net, _ReconHead

#: File format tag stored in saved weights.
FORMAT = "napari-cuts-encoder"
FORMAT_VERSION = 1
#: Channels an input slice may have (sequences or colours), before slice context.
MAX_INPUT_CHANNELS = 8
#: Generic warm-start weights shipped with the package, by input channel count
#: (written by benchmarks/train_warm_start.py; origin and licences in weights/README.md).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PACKAGED_WEIGHTS = {3: "warm_rgb.pt", 1: "warm_grey.pt"}
#: Warm-start weights of the volume encoder (``train_volume_encoder``: slices of a
#: volume's working grid, per-volume percentile input), by (channels of the volume,
#: context slices on each side).
PACKAGED_VOLUME_WEIGHTS = {(1, 0): "warm_volume_grey.pt"}


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
        from .encoder_network import resolve_device

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
        import torch

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
    import torch

    from .encoder_network import DEFAULTS, EMBEDDING_DIM, _dilations, _Net, _ReconHead, resolve_device

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


def packaged_weights(in_channels: int, context_slices: Optional[int] = None) -> Optional[Path]:
    """The packaged warm-start weights, or None where the package ships none.

    ``context_slices=None`` (the default): the start point for ``in_channels``-channel
    2D images (3: RGB ``warm_rgb.pt``, 1: grey ``warm_grey.pt``).
    ``context_slices=k`` (an int, 0 included): the start point of the volume encoder
    (:func:`napari_cuts.pipeline_volume.train_volume_encoder`) for volumes of
    ``in_channels`` channels (before slice context) with ``k`` neighbour slices on each
    side: ``warm_volume_grey.pt`` for grey volumes with ``k = 0``
    (:data:`napari_cuts.volume.CONTEXT_SLICES`), None for any other pair (multi-channel
    volumes: none)."""
    if context_slices is None:
        name = PACKAGED_WEIGHTS.get(int(in_channels))
    else:
        name = PACKAGED_VOLUME_WEIGHTS.get((int(in_channels), int(context_slices)))
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
    from .encoder_network import _dilations

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


def is_volume_encoder(encoder: Encoder) -> bool:
    """True for an encoder trained on volumes (``train_volume_encoder``: 2D on slices, or
    2.5D with neighbour slices as channels)."""
    return bool(encoder.metadata.get("volume")) or int(encoder.metadata.get("context_slices", 0) or 0) > 0


def _check_channels(encoder: Encoder, c: int) -> None:
    """Raise :class:`WeightsError` when an image of ``c`` channels does not fit ``encoder``."""
    if c != encoder.in_channels:
        def kind(n: int) -> str:
            return {1: " (grey)", 3: " (RGB)", 4: " (RGBA)"}.get(n, "")
        raise WeightsError(
            f"encoder was trained on {encoder.in_channels}-channel{kind(encoder.in_channels)} "
            f"images, this image has {c} channel{'s' if c != 1 else ''}; train a new encoder "
            "or load matching weights.")
