"""Training the CUTS encoder, without labels: :func:`train_encoder`.

Training uses the paper's two losses:

* **contrastive** (NT-Xent, cosine similarity / temperature): anchors are random
  pixels; each anchor's positive is a pixel within ``reach`` pixels whose 5 x 5
  patch passes an SSIM check (> ``ssim_threshold``) against the anchor's patch;
  the positives of the other anchors in the batch are its negatives;
* **reconstruction**: a small MLP head rebuilds the 5 x 5 x C patch around each
  anchor from its embedding (MSE).

``loss = lam * contrastive + (1 - lam) * reconstruction``.

Training runs on random crops with many anchors each, samples all anchors and
positive candidates at once, runs the SSIM check for all pairs as tensor ops and
gathers embeddings with one index: a training step on 8 crops of 64 x 64 with 256
anchors each takes a fraction of a second on a laptop CPU. The budget is a number of
steps (by default one that follows the data, :mod:`napari_cuts.budget`, ending early
once the loss has settled), epochs, or seconds; progress is reported and cancel
checked every step.

torch and the network (:mod:`napari_cuts.encoder_network`) are imported inside the
functions that run them.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Optional

import numpy as np

from . import __version__
from .encoder_embedding import _normalise
from .encoder_weights import FORMAT, MAX_INPUT_CHANNELS, Encoder, _resolve_init
from .errors import InputError
from .images import Cancel, Progress, check_cancel, checked_list, report

if TYPE_CHECKING:
    import torch


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
    import torch
    import torch.nn.functional as F

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


class _AdamW:
    """AdamW, the update of ``torch.optim.AdamW`` (betas (0.9, 0.999), eps 1e-8,
    decoupled weight decay; its single-tensor path, the one torch takes on the CPU) op
    for op, so the weights are bit-identical to it.

    Why not ``torch.optim.AdamW`` itself: its constructor imports ``torch._dynamo``
    (``torch._disable_dynamo`` on ``add_param_group``), about 1.5 s on a busy 2-core
    machine before the first step (docs/decisions/0013), and its ``step`` adds
    per-call hooks that training does not use. ``lr`` is read from the attribute at
    every step (the schedule sets it)."""

    def __init__(self, params, lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.state: dict[int, list] = {}     # id(param) -> [steps, exp_avg, exp_avg_sq]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        import torch

        lr, wd, beta1, beta2, eps = self.lr, self.weight_decay, self.beta1, self.beta2, self.eps
        with torch.no_grad():
            for p in self.params:
                grad = p.grad
                if grad is None:
                    continue
                st = self.state.get(id(p))
                if st is None:
                    st = self.state[id(p)] = [0, torch.zeros_like(p, memory_format=torch.preserve_format),
                                              torch.zeros_like(p, memory_format=torch.preserve_format)]
                st[0] += 1
                exp_avg, exp_avg_sq = st[1], st[2]
                if wd != 0:
                    p.mul_(1 - lr * wd)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = float(st[0])
                bias_correction1 = 1 - beta1 ** step
                bias_correction2 = 1 - beta2 ** step
                step_size = lr / bias_correction1
                denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-step_size)


# ------------------------------------------------------------------------- training


def _check_options(options: dict) -> dict:
    from .encoder_network import DEFAULTS, _dilations

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


def train_encoder(images, *, steps: Optional[int] = None, epochs: Optional[float] = None,
                  seconds: Optional[float] = None, settle: Optional[bool] = None,
                  seed: int = 0, device: str = "auto", progress: Progress = None,
                  cancel: Cancel = None, init=None, **options) -> Encoder:
    """Train a CUTS encoder on a stack of 2D images, without labels.

    Parameters
    ----------
    images : sequence of (H, W) / (H, W, C) arrays, or one array (N, H, W[, C])
        Any size (each at least 17 x 17), uint8/uint16/int/float; all with the same
        channel count. Normalised per channel to the (0.5, 99.5) percentiles of the
        whole stack (recorded in the metadata and reused by :func:`embed`).
    steps : int, optional
        At most this many optimisation steps (the learning-rate schedule spans them).
        With no budget at all, :func:`napari_cuts.budget.default_steps` of the
        images' pixels and channels (fewer from a warm start ``init``).
    epochs : float, optional
        Passes over the data; one epoch is ``sum(H * W) / crop_size**2`` crops.
    seconds : float, optional
        Wall-time budget (the step count then depends on the machine and its load).
        With several budgets, training stops at whichever ends first.
    settle : bool, optional
        Stop early once the loss has settled (:func:`napari_cuts.budget.settled`).
        Default: True for a budget in steps (given or default), False for epochs or
        seconds. ``metadata["stopped"]`` says why training ended.
    seed : int
        Seeds torch and numpy: the same seed and step budget give identical weights on
        one machine's CPU (a ``seconds`` budget makes the step count depend on the
        machine and its load).
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
    import torch
    import torch.nn.functional as F

    from .encoder_network import DEFAULTS, EMBEDDING_DIM, _Net, _ReconHead, _use_all_cores, resolve_device

    opts = _check_options(options)
    ctx = int(opts["context_slices"])
    if ctx < 0:
        raise InputError(f"context_slices must be >= 0, got {ctx}.")
    stack = checked_list(images, max_channels=MAX_INPUT_CHANNELS * (2 * ctx + 1))
    if epochs is not None and not float(epochs) > 0:
        raise InputError(f"epochs must be > 0, got {epochs!r}.")
    if seconds is not None and not float(seconds) > 0:
        raise InputError(f"seconds must be > 0, got {seconds!r}.")
    if steps is not None:
        if isinstance(steps, bool) or not float(steps) >= 1 or float(steps) != int(steps):
            raise InputError(f"steps must be a whole number >= 1, got {steps!r}.")
        steps = int(steps)
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
    start, origin = (None, None)
    if init is not None:
        start, origin = _resolve_init(init, in_channels, ctx, opts, options)
    if steps is None and epochs is None and seconds is None:
        from .budget import default_steps

        steps = default_steps(sum(im.shape[1] * im.shape[2] for im in normed),
                              in_channels // (2 * ctx + 1), warm=start is not None)
    if settle is None:
        settle = steps is not None and epochs is None and seconds is None
    caps = [int(steps)] if steps is not None else []
    if epochs is not None:
        caps.append(int(math.ceil(float(epochs) * steps_per_epoch)))
    max_steps = min(caps) if caps else None
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
    optim = _AdamW(params, lr=opts["lr"], weight_decay=opts["weight_decay"])
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
    from .budget import settled

    t0 = time.perf_counter()
    step = 0
    frac = 0.0
    stopped = "budget"
    while True:
        check_cancel(cancel)
        elapsed = time.perf_counter() - t0
        fr_steps = step / max_steps if max_steps else 0.0
        fr_time = elapsed / float(seconds) if seconds is not None else 0.0
        frac = max(fr_steps, fr_time)
        if frac >= 1.0:
            stopped = "steps" if fr_steps >= 1.0 else "seconds"
            break
        if settle and settled(hist["loss"]):
            stopped = "settled"
            break
        # warm-up then cosine decay, driven by the fraction of the budget used
        lr_scale = min(1.0, (frac + 1e-9) / warm) if warm > 0 else 1.0
        lr_scale *= 0.5 * (1.0 + math.cos(math.pi * frac))
        optim.lr = opts["lr"] * max(lr_scale, 1e-3)

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

        optim.zero_grad()
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
        "params": {**opts, "steps": steps, "epochs": epochs, "seconds": seconds,
                   "settle": bool(settle), "crop_used": s, "reach_used": sampler.reach},
        "steps": step,
        "budget_steps": max_steps,
        "stopped": stopped,
        "steps_per_epoch": steps_per_epoch,
        "epochs_done": step / steps_per_epoch,
        "seconds_used": elapsed,
        "n_images": len(stack),
        "warm_start": origin,
        "history": hist,
    }
    return Encoder(net, head, meta, dev)
