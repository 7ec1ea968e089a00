"""Pictures: 16-bit PNG through imagecodecs (every colour type, interlaced), and a
folder of PNG/TIFF files opening as a stack."""

from __future__ import annotations

import io as _bytesio

import numpy as np
import pytest
from PIL import Image

from napari_cuts import io
from napari_cuts._reader import napari_get_reader
from napari_cuts.errors import ReadError


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("interlace", [False, True])
def test_png16_every_colour_type_with_pypng_files(tmp_path, channels, interlace):
    """Files written by another encoder (pypng), Adam7-interlaced too."""
    png = pytest.importorskip("png", reason="pypng writes the reference files")
    rng = np.random.default_rng(channels)
    arr = rng.integers(0, 65536, (23, 17, channels)).astype(np.uint16)
    buf = _bytesio.BytesIO()
    png.Writer(17, 23, greyscale=channels < 3, alpha=channels in (2, 4), bitdepth=16,
               interlace=interlace).write(buf, arr.reshape(23, -1))
    (tmp_path / "x.png").write_bytes(buf.getvalue())
    img = io.read_image(tmp_path / "x.png")
    assert img.data.dtype == np.uint16 and img.metadata["bit_depth"] == 16
    expected = {1: arr[..., 0], 2: arr[..., 0], 3: arr, 4: arr[..., :3]}[channels]
    np.testing.assert_array_equal(img.data, expected)
    assert img.rgb == (channels >= 3)


def test_corrupt_png16_is_a_read_error(tmp_path):
    png = pytest.importorskip("png")
    buf = _bytesio.BytesIO()
    png.Writer(40, 30, greyscale=False, bitdepth=16).write(
        buf, np.full((30, 120), 999, np.uint16))
    raw = buf.getvalue()
    (tmp_path / "t.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ReadError, match="t.png"):
        io.read_image(tmp_path / "t.png")


def test_folder_of_pictures_is_a_stack_in_natural_order(tmp_path):
    import tifffile

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (12, 15), dtype=np.uint8) for _ in range(11)]
    folder = tmp_path / "stack"
    folder.mkdir()
    for i, f in enumerate(frames):  # slice_1 .. slice_11: "10" and "11" sort after "9"
        if i % 3 == 0:
            tifffile.imwrite(folder / f"slice_{i + 1}.tif", f)
        else:
            Image.fromarray(f).save(folder / f"slice_{i + 1}.png")
    (folder / "notes.txt").write_text("ignored")
    (folder / ".hidden.png").write_bytes(b"not a picture")
    assert io.is_supported(folder)
    img = io.read_image(folder)
    assert img.data.shape == (11, 12, 15) and not img.rgb and img.ndim_spatial == 3
    np.testing.assert_array_equal(img.data, np.stack(frames))
    assert img.metadata["files"][:3] == ["slice_1.tif", "slice_2.png", "slice_3.png"]
    assert img.metadata["files"][-2:] == ["slice_10.tif", "slice_11.png"]
    (data, kw, kind), = napari_get_reader(str(folder))(str(folder))
    assert kind == "image" and data.shape == (11, 12, 15) and kw["name"] == "stack"


def test_folder_of_rgb_pictures(tmp_path):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (8, 9, 3), dtype=np.uint8) for _ in range(3)]
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"{i:02d}.png")
    img = io.read_image(tmp_path)
    assert img.rgb and img.data.shape == (3, 8, 9, 3)
    np.testing.assert_array_equal(img.data, np.stack(frames))
    assert img.layer_kwargs()["rgb"] is True


def test_folder_with_an_odd_picture_names_it(tmp_path):
    for i in range(3):
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / f"im{i}.png")
    Image.fromarray(np.zeros((10, 11), np.uint8)).save(tmp_path / "im3.png")
    with pytest.raises(ReadError, match=r"im3\.png.*11 x 10.*im0\.png.*10 x 10"):
        io.read_image(tmp_path)
    (tmp_path / "im3.png").unlink()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "im4.png")
    with pytest.raises(ReadError, match=r"im4\.png.*RGB.*grey"):
        io.read_image(tmp_path)
    (tmp_path / "im4.png").unlink()
    (tmp_path / "im5.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ReadError, match=r"im5\.png"):
        io.read_image(tmp_path)


def test_folder_without_pictures_is_not_supported(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert not io.is_supported(tmp_path)
    assert napari_get_reader(str(tmp_path)) is None
    with pytest.raises(ReadError, match="no DICOM images"):
        io.read_image(tmp_path)
