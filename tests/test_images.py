import numpy as np
import pytest

from napari_cuts.errors import Cancelled, InputError
from napari_cuts.images import as_image_list, check_cancel, check_image, report


def test_check_image_shapes_and_dtypes():
    assert check_image(np.zeros((20, 30), np.uint8) + np.arange(30, dtype=np.uint8)).shape == (20, 30, 1)
    rgb = np.random.default_rng(0).integers(0, 65535, (20, 30, 3)).astype(np.uint16)
    out = check_image(rgb)
    assert out.shape == (20, 30, 3) and out.dtype == np.float32
    assert out[3, 4, 1] == rgb[3, 4, 1]


@pytest.mark.parametrize(
    "arr, words",
    [
        (np.full((32, 32), 7.0), "constant"),
        (np.array([[np.nan] * 32] * 32), "NaN"),
        (np.ones((8, 8)) * np.arange(8), "at least"),
        (np.ones((2, 3, 4, 5)), "expected one 2D image"),
        (np.zeros((32, 32), dtype=complex), "dtype"),
        (np.ones((3, 40, 40)) * np.arange(40), "channels-first"),
    ],
)
def test_check_image_rejects_with_clear_message(arr, words):
    with pytest.raises(InputError, match=words):
        check_image(arr)


def test_inf_is_rejected():
    a = np.random.default_rng(0).random((32, 32))
    a[3, 3] = np.inf
    with pytest.raises(InputError, match="1 NaN or infinite"):
        check_image(a)


def test_as_image_list_forms():
    rng = np.random.default_rng(0)
    stack = rng.random((5, 20, 20))
    assert len(as_image_list(stack)) == 5
    assert len(as_image_list(rng.random((20, 20, 3)))) == 1
    assert len(as_image_list([rng.random((20, 20)), rng.random((30, 25))])) == 2
    with pytest.raises(InputError, match="empty"):
        as_image_list([])
    with pytest.raises(InputError, match="channel counts"):
        as_image_list([rng.random((20, 20)), rng.random((20, 20, 3))])


def test_hooks():
    seen = []
    report(lambda d, t, m: seen.append((d, t, m)), 1, 2, "x")
    report(None, 1, 2, "x")
    assert seen == [(1, 2, "x")]
    check_cancel(None)
    check_cancel(lambda: False)
    with pytest.raises(Cancelled):
        check_cancel(lambda: True)
