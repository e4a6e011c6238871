"""ImageNet metadata readers on small hand-written files: each format, its expected dict, and the error messages."""
from __future__ import annotations

import pytest

from hierclr.data.imagenet_meta import (
    parse_class_index,
    parse_file_list,
    parse_val_annotations,
    read_class_index,
    read_file_list,
    read_val_annotations,
)
from hierclr.io.errors import DataFormatError

KAGGLE = """ImageId,PredictionString
ILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 44 21 322 295
ILSVRC2012_val_00020130,n03584829 127 94 365 365 
ILSVRC2012_val_00045950,n01440764 11 0 499 374
"""

TINY = "val_0.JPEG\tn03444034\t0\t32\t44\t62\nval_1.JPEG\tn04067472\t52\t55\t57\t59\n\nval_2.JPEG\tn04070727\t4\t0\t60\t55\n"

GENERIC = """
ILSVRC2012_val_00000001.JPEG n01751748
ILSVRC2012_val_00000002.JPEG\tn09193705
  ILSVRC2012_val_00000003.JPEG    n02105855
"""


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_kaggle_solution_csv(tmp_path):
    want = {
        "ILSVRC2012_val_00008726.JPEG": "n02119789",
        "ILSVRC2012_val_00020130.JPEG": "n03584829",
        "ILSVRC2012_val_00045950.JPEG": "n01440764",
    }
    path = _write(tmp_path, "LOC_val_solution.csv", KAGGLE)
    assert read_val_annotations(path) == want
    assert read_val_annotations(str(path)) == want
    assert list(read_val_annotations(path)) == list(want)  # file order kept
    # Windows line endings and a BOM, as written by spreadsheet tools; the header-less CSV too
    assert parse_val_annotations("\ufeff" + KAGGLE.replace("\n", "\r\n")) == want
    assert parse_val_annotations(KAGGLE.split("\n", 1)[1]) == want


def test_tiny_imagenet_val_annotations(tmp_path):
    want = {"val_0.JPEG": "n03444034", "val_1.JPEG": "n04067472", "val_2.JPEG": "n04070727"}
    assert read_val_annotations(_write(tmp_path, "val_annotations.txt", TINY)) == want


def test_generic_two_columns(tmp_path):
    want = {
        "ILSVRC2012_val_00000001.JPEG": "n01751748",
        "ILSVRC2012_val_00000002.JPEG": "n09193705",
        "ILSVRC2012_val_00000003.JPEG": "n02105855",
    }
    assert read_val_annotations(_write(tmp_path, "val.txt", GENERIC)) == want
    assert parse_val_annotations("a.png cat\nb.png dog\n") == {"a.png": "cat", "b.png": "dog"}


def test_same_duplicate_is_fine():
    assert parse_val_annotations("a.png cat\nb.png dog\na.png cat\n") == {"a.png": "cat", "b.png": "dog"}


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("a.png cat\nb.png dog\nc.png\n", 3, "malformed line 'c.png'"),
        ("a.png cat\n\nb.png dog extra\n", 3, "malformed line"),
        (KAGGLE + "ILSVRC2012_val_00000009,\n", 5, "malformed line"),
        (KAGGLE + "ILSVRC2012_val_00000009 n01440764\n", 5, "Kaggle"),
        (TINY + "val_3.JPEG\tn04070727\t4\t0\n", 5, "Tiny-ImageNet"),
        (TINY + "val_3.JPEG\tn04070727\t4\t0\tx\t55\n", 5, "malformed line"),
        ("just-one-token\n", 1, "unrecognised validation annotation format"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, text, line, needle):
    path = _write(tmp_path, "annotations.txt", text)
    with pytest.raises(DataFormatError) as e:
        read_val_annotations(path)
    assert f"{path}:{line}:" in str(e.value)
    assert needle in str(e.value)
    with pytest.raises(DataFormatError, match=rf"^<text>:{line}: "):
        parse_val_annotations(text)


def test_conflicting_duplicate(tmp_path):
    path = _write(tmp_path, "val.txt", "a.png cat\nb.png dog\n\na.png dog\n")
    with pytest.raises(DataFormatError) as e:
        read_val_annotations(path)
    msg = str(e.value)
    assert f"{path}:4:" in msg and "'a.png'" in msg and "line 1" in msg and "'cat'" in msg and "'dog'" in msg
    with pytest.raises(DataFormatError, match=r"val\.csv:3: .*ILSVRC2012_val_00000001\.JPEG"):
        parse_val_annotations(
            "ImageId,PredictionString\nILSVRC2012_val_00000001,n01 1 2 3 4\nILSVRC2012_val_00000001,n02 1 2 3 4\n",
            source="val.csv",
        )


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataFormatError, match="empty"):
        read_val_annotations(_write(tmp_path, "empty.txt", "\n\n"))
    with pytest.raises(DataFormatError, match="only a header"):
        parse_val_annotations("ImageId,PredictionString\n", source="x.csv")
    missing = tmp_path / "missing.txt"
    for reader in (read_val_annotations, read_file_list, read_class_index):
        with pytest.raises(DataFormatError, match="file not found") as e:
            reader(missing)
        assert str(missing) in str(e.value)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataFormatError, match="not a UTF-8 text file"):
        read_file_list(binary)


def test_read_file_list(tmp_path):
    text = "n01440764_10026.JPEG\nn01440764_10027.JPEG\n\n  n01443537_1000.JPEG  \nn01440764_1003.JPEG\n"
    want = ["n01440764_10026.JPEG", "n01440764_10027.JPEG", "n01443537_1000.JPEG", "n01440764_1003.JPEG"]
    assert read_file_list(_write(tmp_path, "1percent.txt", text)) == want
    assert parse_file_list(text.replace("\n", "\r\n")) == want


def test_file_list_errors(tmp_path):
    path = _write(tmp_path, "10percent.txt", "a.JPEG\nb.JPEG\n\na.JPEG\n")
    with pytest.raises(DataFormatError) as e:
        read_file_list(path)
    assert f"{path}:4:" in str(e.value) and "duplicate file 'a.JPEG'" in str(e.value) and "line 1" in str(e.value)
    with pytest.raises(DataFormatError, match=r"^list\.txt:2: expected one file name per line"):
        parse_file_list("a.JPEG\nb.JPEG n01\n", source="list.txt")
    with pytest.raises(DataFormatError, match="empty"):
        parse_file_list("\n \n", source="list.txt")


def test_read_class_index(tmp_path):
    text = "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n\nn01484850\n"
    path = _write(tmp_path, "LOC_synset_mapping.txt", text)
    assert read_class_index(path) == ["n01440764", "n01443537", "n01484850"]
    assert parse_class_index("cat\ndog\tanimal\nbird\n") == ["cat", "dog", "bird"]


def test_class_index_errors(tmp_path):
    path = _write(tmp_path, "classes.txt", "n01 a\nn02 b\nn01 c\n")
    with pytest.raises(DataFormatError) as e:
        read_class_index(path)
    assert f"{path}:3:" in str(e.value) and "duplicate class 'n01'" in str(e.value)
    with pytest.raises(DataFormatError, match="empty"):
        parse_class_index("", source="classes.txt")
