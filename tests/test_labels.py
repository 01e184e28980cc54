"""Aff-Wild2 annotation files and ABAW submission files: round trips and malformed input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from mmexpr.labels import (
    ANNOTATION_HEADER,
    CLASSES,
    LabelFileError,
    fit_to_frames,
    prompts,
    read_annotation,
    read_submission,
    split_track,
    warn_fitted,
    write_annotation,
    write_submission,
)


def test_classes_are_in_abaw_order() -> None:
    assert CLASSES == ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")


def test_annotation_round_trip_keeps_ignored_frames(tmp_path: Path) -> None:
    labels = np.array([0, 1, -1, 7, 4, -1, 3])
    path = write_annotation(tmp_path / "vid_left.txt", labels)
    assert path.read_text().splitlines()[0] == ANNOTATION_HEADER
    np.testing.assert_array_equal(read_annotation(path), labels)


def test_annotation_tolerates_trailing_blank_lines_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("\ufeff" + ANNOTATION_HEADER + "\n1\n2\n\n\n")
    np.testing.assert_array_equal(read_annotation(path), [1, 2])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("Neutral,Anger\n1\n", r"a.txt:1: header"),
        (ANNOTATION_HEADER + "\n1\nx\n", r"a.txt:3: 'x' is not an integer"),
        (ANNOTATION_HEADER + "\n1\n8\n", r"a.txt:3: label 8 out of range"),
        (ANNOTATION_HEADER + "\n1\n\n2\n", r"a.txt:3: empty line"),
        ("", r"a.txt: empty file"),
    ],
)
def test_malformed_annotation_names_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "a.txt"
    path.write_text(body)
    with pytest.raises(LabelFileError, match=message):
        read_annotation(path)


def test_binary_annotation_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(LabelFileError, match="not a text file"):
        read_annotation(path)


def test_submission_round_trip(tmp_path: Path) -> None:
    labels = np.array([3, 3, 0, 7, 1])
    path = write_submission(tmp_path / "v_right.txt", "v_right", labels)
    lines = path.read_text().splitlines()
    assert lines[0] == "image_location," + ",".join(CLASSES)
    assert lines[1] == "v_right/00001.jpg,3"
    track, back = read_submission(path)
    assert track == "v_right"
    np.testing.assert_array_equal(back, labels)


def test_submission_refuses_ignored_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="frame 2 has label -1"):
        write_submission(tmp_path / "v.txt", "v", [1, -1])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("v/00002.jpg,1", r":2: frame 2; expected 1"),
        ("v/00001.png,1", r":2: 'v/00001.png' is not"),
        ("v/00001.jpg,9", r":2: label 9 out of range"),
        ("v/00001.jpg,1,2", r":2: .* expected 'video/00001.jpg,LABEL'"),
        ("v/00001.jpg,happy", r":2: label 'happy' is not an integer"),
    ],
)
def test_malformed_submission_names_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "v.txt"
    path.write_text("image_location," + ",".join(CLASSES) + "\n" + row + "\n")
    with pytest.raises(LabelFileError, match=message):
        read_submission(path)


def test_short_labels_are_padded_and_long_truncated() -> None:
    padded = fit_to_frames(np.array([1, 2, 3]), 5)
    np.testing.assert_array_equal(padded.labels, [1, 2, 3, -1, -1])
    assert (padded.padded, padded.truncated) == (2, 0)
    cut = fit_to_frames(np.array([1, 2, 3, 4]), 2)
    np.testing.assert_array_equal(cut.labels, [1, 2])
    assert (cut.padded, cut.truncated) == (0, 2)


def test_large_mismatch_is_an_error() -> None:
    with pytest.raises(LabelFileError, match="vid.txt: 3 labels for 100 frames"):
        fit_to_frames(np.array([1, 2, 3]), 100, source="vid.txt")


def test_mismatches_are_counted_in_one_warning() -> None:
    results = [("a", fit_to_frames(np.zeros(3, int), 5)), ("b", fit_to_frames(np.zeros(6, int), 5))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_fitted(results + [("c", fit_to_frames(np.zeros(5, int), 5))])
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "2 track(s)" in text and "2 frame(s) padded" in text and "1 label(s) truncated" in text


def test_track_names_split_left_and_right() -> None:
    assert split_track("10-60-1280x720_left") == ("10-60-1280x720", "left")
    assert split_track("10-60-1280x720") == ("10-60-1280x720", "")


def test_prompts_cover_every_class_and_template() -> None:
    texts = prompts(["a {} face", "showing {}"])
    assert len(texts) == len(CLASSES) and all(len(t) == 2 for t in texts)
    assert texts[4][0] == "a happiness face"

