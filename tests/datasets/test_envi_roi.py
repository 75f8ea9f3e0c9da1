"""ENVI ROI text: the Houston 2013 official split's exact layout and counts, and malformed files."""

import numpy as np
import pytest

from fedrs.datasets import EnviRoiDataset, parse_envi_roi
from fedrs.errors import InputError

HOUSTON_CLASSES = ["Healthy grass", "Stressed grass", "Synthetic grass", "Trees", "Soil", "Water",
                   "Residential", "Commercial", "Road", "Highway", "Railway", "Parking lot 1",
                   "Parking lot 2", "Tennis court", "Running track"]
TRAIN_COUNTS = [198, 190, 192, 188, 186, 182, 196, 191, 193, 191, 181, 192, 184, 181, 187]
TEST_COUNTS = [1053, 1064, 505, 1056, 1056, 143, 1072, 1053, 1059, 1036, 1054, 1041, 285, 247, 473]
ROWS, COLS = 349, 1905


def roi_text(counts, headers_first: bool, rng, shape=(ROWS, COLS), taken=None) -> tuple[str, np.ndarray]:
    """An ENVI ROI export as ENVI writes it (CRLF); returns the text and the expected label raster."""
    rows, cols = shape
    free = np.flatnonzero(taken.ravel() == 0) if taken is not None else np.arange(rows * cols)
    picks = rng.choice(free, size=sum(counts), replace=False)
    expected = np.zeros(shape, dtype=np.uint8)
    header = ["; ENVI Output of ROIs (4.8) [Tue Jan 08 10:00:00 2013]", f"; Number of ROIs: {len(counts)}",
              f"; File Dimension: {cols} x {rows}", ";"]
    blocks, start = [], 0
    for klass, n in enumerate(counts, start=1):
        roi_header = [f"; ROI name: {HOUSTON_CLASSES[klass - 1]}", f"; ROI rgb value: {{{klass}, 0, 0}}",
                      f"; ROI npts: {n}"]
        lines = [";   ID     X     Y          Lat          Lon"]
        for point_id, flat in enumerate(picks[start:start + n], start=1):
            r, c = divmod(int(flat), cols)
            expected[r, c] = klass
            lines.append(f"{point_id:6d} {c + 1:5d} {r + 1:5d}  29.7{r:05d}  -95.3{c:05d}")
        start += n
        blocks.append((roi_header, lines))
    if headers_first:  # the VA layout: every ROI header, then every data line
        body = [h for hdr, _ in blocks for h in hdr] + [line for _, lines in blocks for line in lines + [""]]
    else:
        body = [x for hdr, lines in blocks for x in hdr + lines + [""]]
    return "\r\n".join(header + body) + "\r\n", expected


def test_houston_official_split_counts(tmp_path, rng):
    tr_text, tr_expected = roi_text(TRAIN_COUNTS, headers_first=False, rng=rng)
    va_text, va_expected = roi_text(TEST_COUNTS, headers_first=True, rng=rng, taken=tr_expected)
    (tmp_path / "TR.txt").write_bytes(tr_text.encode("latin-1"))
    (tmp_path / "VA.txt").write_bytes(va_text.encode("latin-1"))
    train = EnviRoiDataset(str(tmp_path / "TR.txt")).load()
    test = EnviRoiDataset(str(tmp_path / "VA.txt")).load()
    assert train.shape == test.shape == (ROWS, COLS)
    np.testing.assert_array_equal(train.data[0], tr_expected)
    np.testing.assert_array_equal(test.data[0], va_expected)
    assert np.bincount(train.data.ravel(), minlength=16)[1:].tolist() == TRAIN_COUNTS
    assert np.bincount(test.data.ravel(), minlength=16)[1:].tolist() == TEST_COUNTS
    assert int((train.data > 0).sum()) == 2832 and int((test.data > 0).sum()) == 12197
    assert test.meta["class_names"] == HOUSTON_CLASSES


def small(counts=(3, 2)):
    return roi_text(list(counts), headers_first=True, rng=np.random.default_rng(0), shape=(5, 6))


def test_x_is_column_and_y_is_row():
    text = "; Number of ROIs: 1\n; File Dimension: 6 x 5\n; ROI name: a\n; ROI npts: 1\n1 6 2 0 0\n"
    labels = parse_envi_roi(text).data[0]
    assert labels.shape == (5, 6) and labels[1, 5] == 1 and labels.sum() == 1


def test_declared_roi_count_must_match_id_resets():
    text, _ = small()
    with pytest.raises(InputError, match="declares 3 ROIs but the data holds 2"):
        parse_envi_roi(text.replace("Number of ROIs: 2", "Number of ROIs: 3"))


def test_npts_mismatch():
    text, _ = small()
    with pytest.raises(InputError, match=r"ROI 1 \(Healthy grass\) declares 4 points but .* holds 3"):
        parse_envi_roi(text.replace("ROI npts: 3", "ROI npts: 4"))


def test_pixel_outside_image():
    text = "; File Dimension: 6 x 5\n1 7 1 0 0\n"
    with pytest.raises(InputError, match="X=7, Y=1 outside the 6 x 5 image"):
        parse_envi_roi(text, source="VA.txt")


def test_id_gap_is_refused():
    text = "; File Dimension: 6 x 5\n1 1 1 0 0\n3 2 1 0 0\n"
    with pytest.raises(InputError, match="point ID 3 follows 1"):
        parse_envi_roi(text)


def test_pixel_in_two_rois():
    text = "; File Dimension: 6 x 5\n1 1 1 0 0\n1 1 1 0 0\n"
    with pytest.raises(InputError, match="in ROI 1 and again in ROI 2"):
        parse_envi_roi(text)


def test_garbage_line_and_missing_dimension():
    with pytest.raises(InputError, match="line 2.*not a data line"):
        parse_envi_roi("; File Dimension: 6 x 5\nhello world\n")
    with pytest.raises(InputError, match="no '; File Dimension"):
        parse_envi_roi("1 1 1 0 0\n")
    assert parse_envi_roi("1 1 1 0 0\n", shape=(2, 2)).data.sum() == 1
