"""The PHATE view of the CUTS dock widget: a sample of pixel embeddings in 2D.

:func:`phate_job` is the background computation (a job for
:class:`~napari_cuts._widget.jobs.JobRunner`); :class:`PhatePanel` draws the points
with matplotlib, coloured by the current level's clusters, and emits
``picked(index, modifiers)`` when the user clicks near a point.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from ..images import check_cancel, report


def sample_pixels(embeddings: np.ndarray, pool, shape: tuple[int, int], n: int,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n`` grid cells of ``embeddings`` (h, w, D) at random.

    Returns ``(X, pixels)``: the embeddings ``(n, D)`` and the full-resolution pixel
    each one stands for, ``(n, 2)`` int (row, col) inside ``shape`` (H, W); a grid cell
    of a pooled embedding stands for the centre of its ``pool x pool`` block.
    """
    h, w, d = embeddings.shape
    py, px = (int(pool), int(pool)) if np.isscalar(pool) else (int(pool[0]), int(pool[1]))
    rng = np.random.default_rng(seed)
    n = min(int(n), h * w)
    flat = rng.choice(h * w, size=n, replace=False)
    gy, gx = np.divmod(flat, w)
    rows = np.minimum(gy * py + py // 2, shape[0] - 1)
    cols = np.minimum(gx * px + px // 2, shape[1] - 1)
    X = embeddings.reshape(-1, d)[flat].astype(np.float32)
    return X, np.stack([rows, cols], axis=1).astype(np.int64)


def phate_job(embeddings: np.ndarray, pool: int, shape: tuple[int, int], *, n: int = 2000,
              knn: int = 5, seed: int = 0):
    """A job computing a 2D PHATE embedding of a sample of pixels; returns ``(Y, pixels)``.

    ``Y`` is ``(n, 2)`` float, ``pixels`` ``(n, 2)`` (row, col) of the image.
    """

    def job(progress, cancel):
        report(progress, 0, 2, "PHATE: sampling pixel embeddings")
        X, pixels = sample_pixels(embeddings, pool, shape, n, seed)
        check_cancel(cancel)
        report(progress, 1, 2, f"PHATE on {len(X)} pixels")
        import phate

        op = phate.PHATE(n_components=2, knn=max(2, min(knn, len(X) - 2)), random_state=seed,
                         n_jobs=1, verbose=0)
        Y = np.asarray(op.fit_transform(X), dtype=np.float64)
        check_cancel(cancel)
        report(progress, 2, 2, "PHATE done")
        return Y, pixels
        yield  # noqa: unreachable - makes this a generator function

    return job


class PhatePanel(QWidget):
    """A matplotlib canvas with the PHATE points; click a point to pick its pixel."""

    picked = Signal(int, object)  # index of the point, set of modifier names

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        # the matplotlib figure is built on the first set_points: building it costs
        # about 1.2 s, most of the time to dock the widget, and most users never open
        # the PHATE view
        self.figure = self.canvas = self.ax = None
        self.status = QLabel("Segment an image, then compute the PHATE view.")
        self.status.setWordWrap(True)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.addWidget(self.status)
        self.coords: np.ndarray | None = None
        self.pixels: np.ndarray | None = None
        self._scatter = None
        self._highlight = None

    def _ensure_canvas(self) -> None:
        if self.canvas is not None:
            return
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 3.0), dpi=80, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.ax = self.figure.add_subplot(111)
        self._layout.insertWidget(0, self.canvas)
        self._style_axes()
        self.canvas.mpl_connect("button_press_event", self._on_press)

    def _style_axes(self) -> None:
        self.ax.set_xticks([])
        self.ax.set_yticks([])
        self.ax.set_xlabel("PHATE 1", fontsize=8)
        self.ax.set_ylabel("PHATE 2", fontsize=8)

    def clear(self) -> None:
        """Forget the points (a new segmentation)."""
        self.coords = self.pixels = None
        self._scatter = self._highlight = None
        if self.ax is not None:
            self.ax.clear()
            self._style_axes()
            self.canvas.draw_idle()
        self.status.setText("Segment an image, then compute the PHATE view.")

    def set_points(self, coords: np.ndarray, pixels: np.ndarray, colors: np.ndarray) -> None:
        """Show ``coords`` (n, 2), remembering their image ``pixels`` (n, 2), coloured by
        ``colors``: RGBA (n, 4) or cluster ids (n,)."""
        self._ensure_canvas()
        self.coords = np.asarray(coords)
        self.pixels = np.asarray(pixels)
        self.ax.clear()
        self._style_axes()
        self._scatter = self.ax.scatter(self.coords[:, 0], self.coords[:, 1], s=6,
                                        c=_cluster_colors(colors), linewidths=0)
        self._highlight = None
        self.canvas.draw_idle()
        self.status.setText(f"{len(self.coords)} pixels; click a point to select its cluster.")

    def set_colors(self, colors: np.ndarray, highlight: np.ndarray | None = None) -> None:
        """Recolour the points (RGBA (n, 4) or ids (n,)); outline ``highlight`` (bool (n,))."""
        if self._scatter is None:
            return
        self._scatter.set_facecolor(_cluster_colors(colors))
        if self._highlight is not None:
            self._highlight.remove()
            self._highlight = None
        if highlight is not None and np.any(highlight):
            c = self.coords[np.asarray(highlight, bool)]
            self._highlight = self.ax.scatter(c[:, 0], c[:, 1], s=14, facecolors="none",
                                              edgecolors="black", linewidths=0.6)
        self.canvas.draw_idle()

    def nearest(self, x: float, y: float) -> int:
        """Index of the point nearest to data coordinates (x, y)."""
        d = (self.coords[:, 0] - x) ** 2 + (self.coords[:, 1] - y) ** 2
        return int(np.argmin(d))

    def _on_press(self, event) -> None:
        if self.coords is None or event.inaxes is not self.ax or event.xdata is None:
            return
        mods = set()
        key = (event.key or "").lower()
        if "shift" in key:
            mods.add("Shift")
        if "alt" in key or "control" in key or "ctrl" in key:
            mods.add("Alt")
        self.picked.emit(self.nearest(event.xdata, event.ydata), mods)


def _cluster_colors(colors: np.ndarray) -> np.ndarray:
    """RGBA colours (n, 4): given as such, or made from integer cluster ids (n,)."""
    colors = np.asarray(colors)
    if colors.ndim == 2:
        return colors
    from matplotlib import colormaps

    return colormaps["tab20"]((colors.astype(np.int64) * 7) % 20)
