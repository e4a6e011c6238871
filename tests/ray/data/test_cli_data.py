"""``hierclr prepare-data`` / ``hierclr inspect-data`` from the command line (in-process, shared Ray)."""
from __future__ import annotations

import json

from helpers.image_files import make_image_folder

from hierclr.cli import main


def test_prepare_and_inspect_with_wordnet_style_hierarchy(tmp_path, capsys, ray_session):
    make_image_folder(tmp_path / "raw" / "train", classes=("n01", "n02", "n03", "n04"), per_class=3)
    # WordNet-like `parent child` edges with unequal depths, cut at depth 1 from the root
    (tmp_path / "is_a.txt").write_text("entity animal\nentity artifact\nanimal dog\ndog n01\ndog n02\n"
                                       "animal n03\nartifact n04\n")
    code = main(["prepare-data", str(tmp_path / "raw"), str(tmp_path / "out"), "--shard-size", "5",
                 "--hierarchy", str(tmp_path / "is_a.txt"), "--hierarchy-order", "parent_child",
                 "--hierarchy-depths", "2,1"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"] == {"rows": 12, "shards": 3, "classes": 4, "hierarchy_levels": 3, "skipped": 0}
    assert not (tmp_path / "out" / "train" / "_progress").exists(), "a finished conversion leaves no _progress/"
    assert main(["inspect-data", str(tmp_path / "out" / "train"), "--sample", "12", "--verify"]) == 0
    out = capsys.readouterr()
    info = json.loads(out.out)
    assert info["verified"] == "3/3 shards" and "3/3 shards verified" in out.err
    assert info["format"] == "parquet" and info["rows"] == 12 and info["hierarchy"] == [4, 3, 2]
    # depth 2: n01,n02 -> dog; n03 -> n03 itself (shallower leaf); n04 -> n04. depth 1: animal / artifact
    by_label = {s["label"]: s["labels"] for s in info["sample"]}
    names2 = ["dog", "n03", "n04"]  # sorted level-1 names
    assert [names2[by_label[c][1]] for c in range(4)] == ["dog", "dog", "n03", "n04"]
    assert [["animal", "artifact"][by_label[c][2]] for c in range(4)] == ["animal", "animal", "animal", "artifact"]
    assert all(s["shape"][0] == 3 for s in info["sample"])


def test_bad_option_is_one_clear_line(tmp_path, capsys):
    assert main(["prepare-data", str(tmp_path), str(tmp_path / "o"), "--shard-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "shard_size" in err and "greater than or equal to 1" in err
