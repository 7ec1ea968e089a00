"""Label-id helpers shared by the hierarchy's storage and its persistent map."""

from __future__ import annotations

import numpy as np


def label_dtype(n: int):
    """The smallest unsigned dtype (uint16 or uint32) that holds ids ``0..n-1``."""
    return np.uint16 if n <= np.iinfo(np.uint16).max + 1 else np.uint32


def contiguous(a: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel integer ids to 0..n-1 in order of first value (np.unique order)."""
    uniq, inv = np.unique(a, return_inverse=True)
    return inv.reshape(a.shape), int(uniq.size)
