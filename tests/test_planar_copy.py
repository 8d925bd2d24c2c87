"""``hwc_into_chw`` gives NumPy's transposed copy, byte for byte, with OpenCV and without."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from streamaug.core.planar_copy import hwc_into_chw


@pytest.mark.parametrize("opencv", [True, False])
@pytest.mark.parametrize("channels", [1, 3, 4, 5])
def test_planes_are_numpys_transpose(monkeypatch, opencv, channels):
    splits = []
    if opencv:
        cv2 = pytest.importorskip("cv2")
        split = cv2.split
        monkeypatch.setattr(cv2, "split", lambda *a: splits.append(1) or split(*a))
    else:
        monkeypatch.setitem(sys.modules, "cv2", None)         # as if OpenCV were never imported
    rng = np.random.default_rng(channels)
    src = rng.integers(0, 256, (13, 17, channels), dtype=np.uint8)
    for view in (src, src[:, ::-1], src[::2]):              # strided sources too
        dst = np.zeros((channels, *view.shape[:2]), dtype=np.uint8)
        hwc_into_chw(view, dst)
        assert np.array_equal(dst, view.transpose(2, 0, 1))
    assert len(splits) == (3 if opencv and channels in (3, 4) else 0), "cv2.split takes 2-4 channels, when imported"


def test_a_destination_opencv_cannot_fill_takes_numpys_copy():
    pytest.importorskip("cv2")
    src = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    wide = np.zeros((3, 4, 5), dtype=np.float32)
    hwc_into_chw(src, wide)                                  # numpy converts; cv2.split would leave it
    assert np.array_equal(wide, src.transpose(2, 0, 1).astype(np.float32))
    with pytest.raises(ValueError):
        hwc_into_chw(src, np.zeros((3, 5, 4), dtype=np.uint8))   # a wrong shape is an error, not left unwritten


def test_a_batch_row_is_written_in_place():
    pytest.importorskip("cv2")
    src = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    batch = np.zeros((3, 3, 8, 8), dtype=np.uint8)
    for i in range(3):
        hwc_into_chw(src[i], batch[i])
    assert np.array_equal(batch, src.transpose(0, 3, 1, 2))
