"""Label hierarchies: edge-list parsing (real CIFAR-10 file), depth cuts, JSON, CIFAR-100, every error path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hierclr.labels import HierarchyError, LabelHierarchy, cifar100, from_edge_list, load_hierarchy

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# content of shared/data/cifar10-hierarchy.tsv
CIFAR10_TSV = """child\tparent
airplane\taircraft_or_ship
ship\taircraft_or_ship
automobile\troad_vehicle
truck\troad_vehicle
cat\tmammal
dog\tmammal
deer\tmammal
horse\tmammal
bird\tnon_mammal
frog\tnon_mammal
aircraft_or_ship\tvehicle
road_vehicle\tvehicle
mammal\tanimal
non_mammal\tanimal
"""

# hand-written: fine class -> (group, domain)
CIFAR10_EXPECTED = {
    "airplane": ("aircraft_or_ship", "vehicle"),
    "automobile": ("road_vehicle", "vehicle"),
    "bird": ("non_mammal", "animal"),
    "cat": ("mammal", "animal"),
    "deer": ("mammal", "animal"),
    "dog": ("mammal", "animal"),
    "frog": ("non_mammal", "animal"),
    "horse": ("mammal", "animal"),
    "ship": ("aircraft_or_ship", "vehicle"),
    "truck": ("road_vehicle", "vehicle"),
}
# the same as indices: groups sorted by name (aircraft_or_ship, mammal, non_mammal, road_vehicle),
# domains (animal, vehicle)
CIFAR10_TABLE = np.array(
    [
        [0, 0, 1],  # airplane
        [1, 3, 1],  # automobile
        [2, 2, 0],  # bird
        [3, 1, 0],  # cat
        [4, 1, 0],  # deer
        [5, 1, 0],  # dog
        [6, 2, 0],  # frog
        [7, 1, 0],  # horse
        [8, 0, 1],  # ship
        [9, 3, 1],  # truck
    ]
)

# WordNet-like forest with unequal leaf depths:
#   entity -> animal -> dog -> {terrier, poodle};  entity -> animal -> cat
#   entity -> artifact -> vehicle -> car;          plant -> oak
FOREST_EDGES = [
    ("animal", "entity"),
    ("artifact", "entity"),
    ("dog", "animal"),
    ("cat", "animal"),
    ("terrier", "dog"),
    ("poodle", "dog"),
    ("vehicle", "artifact"),
    ("car", "vehicle"),
    ("oak", "plant"),
]
FOREST_CLASSES = ["terrier", "poodle", "cat", "car", "oak"]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def check_cifar10(h: LabelHierarchy) -> None:
    assert h.sizes == (10, 4, 2)
    assert h.num_levels == 3
    assert h.names[0] == tuple(CIFAR10_CLASSES)
    assert h.names[1] == ("aircraft_or_ship", "mammal", "non_mammal", "road_vehicle")
    assert h.names[2] == ("animal", "vehicle")
    table = h.labels_at_all_levels(np.arange(10))
    assert table.dtype == np.int64 and table.shape == (10, 3)
    np.testing.assert_array_equal(table, CIFAR10_TABLE)
    for i, fine in enumerate(CIFAR10_CLASSES):
        group, domain = CIFAR10_EXPECTED[fine]
        assert (h.names[1][table[i, 1]], h.names[2][table[i, 2]]) == (group, domain)
    cat, truck, ship = (CIFAR10_CLASSES.index(c) for c in ("cat", "truck", "ship"))
    assert [h.names[lv + 1][a] for lv, a in enumerate(h.ancestors(cat))] == ["mammal", "animal"]
    assert [h.names[lv + 1][a] for lv, a in enumerate(h.ancestors(truck))] == ["road_vehicle", "vehicle"]
    assert [h.names[lv + 1][a] for lv, a in enumerate(h.ancestors(ship))] == ["aircraft_or_ship", "vehicle"]


# ---------------------------------------------------------------------------------------------
# CIFAR-10 edge list
# ---------------------------------------------------------------------------------------------
def test_cifar10_real_file(shared_data_dir):
    path = shared_data_dir / "cifar10-hierarchy.tsv"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    h = from_edge_list(path, CIFAR10_CLASSES, level_names=("class", "group", "domain"))
    check_cifar10(h)
    assert h.level_names == ("class", "group", "domain")
    h2 = load_hierarchy(str(path), CIFAR10_CLASSES)
    check_cifar10(h2)


def test_cifar10_copy(tmp_path):
    h = from_edge_list(write(tmp_path, "c10.tsv", CIFAR10_TSV), CIFAR10_CLASSES)
    check_cifar10(h)
    assert h.level_names == ("level0", "level1", "level2")
    np.testing.assert_array_equal(h.parent_map(0), [0, 3, 2, 1, 1, 1, 2, 1, 0, 3])
    np.testing.assert_array_equal(h.parent_map(1), [1, 0, 0, 1])  # aircraft_or_ship, mammal, non_mammal, road_v.
    np.testing.assert_array_equal(h.composed_map(0), np.arange(10))
    np.testing.assert_array_equal(h.composed_map(2), CIFAR10_TABLE[:, 2])
    assert h.composed_map(1).dtype == np.int64


def test_edge_list_spaces_comments_no_header(tmp_path):
    text = "# CIFAR-10, space separated\n\n" + CIFAR10_TSV.split("\n", 1)[1].replace("\t", "   ") + "\n  # end\n"
    text = text.replace("cat   mammal", "cat mammal   # inline comment")
    check_cifar10(from_edge_list(write(tmp_path, "c10.txt", text), CIFAR10_CLASSES))


def test_edge_list_parent_child_order(tmp_path):
    lines = [line.split("\t")[::-1] for line in CIFAR10_TSV.strip().splitlines()]
    text = "\n".join(" ".join(f) for f in lines)  # header becomes "parent child"
    check_cifar10(from_edge_list(write(tmp_path, "is_a.txt", text), CIFAR10_CLASSES, order="parent_child"))
    with pytest.raises(HierarchyError, match="contradicts"):
        from_edge_list(tmp_path / "is_a.txt", CIFAR10_CLASSES)  # header says parent child


def test_minus_one_stays_minus_one(tmp_path):
    h = from_edge_list(write(tmp_path, "c10.tsv", CIFAR10_TSV), CIFAR10_CLASSES)
    out = h.labels_at_all_levels(np.array([-1, 3, -1, 9]))
    np.testing.assert_array_equal(out, [[-1, -1, -1], [3, 1, 0], [-1, -1, -1], [9, 3, 1]])
    assert h.labels_at_all_levels([]).shape == (0, 3)
    assert h.covers([-1, 0, 9])
    h.check_covers([-1, 0, 9])


# ---------------------------------------------------------------------------------------------
# depth cuts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["child_parent", "parent_child"])
def test_depth_cut_forest(tmp_path, order):
    edges = FOREST_EDGES if order == "child_parent" else [e[::-1] for e in FOREST_EDGES]
    path = write(tmp_path, "forest.txt", "\n".join(f"{a}\t{b}" for a, b in edges))
    h = from_edge_list(path, FOREST_CLASSES, depths=(1, 2), order=order, level_names=("leaf", "d2", "d1"))
    assert h.names == (
        ("terrier", "poodle", "cat", "car", "oak"),
        ("cat", "dog", "oak", "vehicle"),  # depth 2; cat and oak are shallower: themselves
        ("animal", "artifact", "oak"),  # depth 1; oak is shallower: itself
    )
    assert h.parents == ((1, 1, 0, 3, 2), (0, 0, 2, 1))
    np.testing.assert_array_equal(
        h.labels_at_all_levels([0, 1, 2, 3, 4]), [[0, 1, 0], [1, 1, 0], [2, 0, 0], [3, 3, 1], [4, 2, 2]]
    )
    roots = from_edge_list(path, FOREST_CLASSES, depths=[0], order=order)
    assert roots.names[1] == ("entity", "plant")
    assert roots.parents == ((0, 0, 0, 0, 1),)
    deep = from_edge_list(path, FOREST_CLASSES, depths=(3,), order=order)
    assert deep.names[1] == ("car", "cat", "oak", "poodle", "terrier")  # all leaves are at depth <= 3


def test_depth_cut_missing_leaf_is_its_own_root(tmp_path):
    path = write(tmp_path, "forest.txt", "\n".join(f"{a} {b}" for a, b in FOREST_EDGES))
    h = from_edge_list(path, [*FOREST_CLASSES, "unicorn"], depths=(1,))
    assert h.names[1] == ("animal", "artifact", "oak", "unicorn")


def test_depth_cut_bad_depths(tmp_path):
    path = write(tmp_path, "forest.txt", "\n".join(f"{a} {b}" for a, b in FOREST_EDGES))
    for bad in [(), (1, 1), (-1,), (1.5,)]:
        with pytest.raises(HierarchyError, match="depths"):
            from_edge_list(path, FOREST_CLASSES, depths=bad)


def test_unequal_leaf_depths(tmp_path):
    path = write(tmp_path, "forest.txt", "\n".join(f"{a} {b}" for a, b in FOREST_EDGES))
    with pytest.raises(HierarchyError) as err:
        from_edge_list(path, FOREST_CLASSES)
    msg = str(err.value)
    assert str(path) in msg and "different depths" in msg
    assert "depth 1: 'oak'" in msg and "depth 2: 'cat'" in msg and "depth 3: 'terrier', 'poodle', 'car'" in msg


# ---------------------------------------------------------------------------------------------
# edge-list errors
# ---------------------------------------------------------------------------------------------
def test_leaf_missing_from_edge_list(tmp_path):
    path = write(tmp_path, "c10.tsv", CIFAR10_TSV)
    with pytest.raises(HierarchyError) as err:
        from_edge_list(path, [*CIFAR10_CLASSES[:-1], "lorry"])
    assert "'lorry'" in str(err.value) and str(path) in str(err.value)


def test_multiple_parents(tmp_path):
    text = "a x\nb x\na x\n\na y\nx r\ny r\n"  # a -> x twice (fine), then a -> y
    path = write(tmp_path, "multi.txt", text)
    with pytest.raises(HierarchyError) as err:
        from_edge_list(path, ["a", "b"])
    msg = str(err.value)
    assert str(path) in msg and "'a'" in msg and "'x' (line 1)" in msg and "'y' (line 5)" in msg
    h = from_edge_list(path, ["a", "b"], on_multiple_parents="first")
    assert h.names == (("a", "b"), ("x",), ("r",))
    assert h.parents == ((0, 0), (0,))
    with pytest.raises(HierarchyError, match="on_multiple_parents"):
        from_edge_list(path, ["a", "b"], on_multiple_parents="last")


def test_cycle(tmp_path):
    path = write(tmp_path, "cycle.txt", "leaf a\na b\nb c\nc a\n")
    with pytest.raises(HierarchyError) as err:
        from_edge_list(path, ["leaf"])
    msg = str(err.value)
    assert str(path) in msg and "cycle" in msg and "a -> b -> c -> a" in msg
    with pytest.raises(HierarchyError, match="cycle.*z -> z"):
        from_edge_list(write(tmp_path, "self.txt", "leaf z\nz z\n"), ["leaf"])


@pytest.mark.parametrize("bad", ["cat mammal animal", "cat"])
def test_bad_line(tmp_path, bad):
    path = write(tmp_path, "bad.tsv", "child\tparent\n# comment\n" + bad + "\ndog mammal\n")
    with pytest.raises(HierarchyError) as err:
        from_edge_list(path, ["cat", "dog"])
    assert "line 3" in str(err.value) and str(path) in str(err.value)


def test_empty_edge_list_and_bad_classes(tmp_path):
    with pytest.raises(HierarchyError, match="no edges"):
        from_edge_list(write(tmp_path, "empty.txt", "# nothing\nchild parent\n"), ["a"])
    path = write(tmp_path, "c10.tsv", CIFAR10_TSV)
    with pytest.raises(HierarchyError, match="duplicate class name.*'cat'"):
        from_edge_list(path, [*CIFAR10_CLASSES, "cat"])
    with pytest.raises(HierarchyError, match="order"):
        from_edge_list(path, CIFAR10_CLASSES, order="up_down")


# ---------------------------------------------------------------------------------------------
# constructor validation
# ---------------------------------------------------------------------------------------------
def test_constructor_errors():
    names = (("a", "b", "c"), ("X", "Y"))
    LabelHierarchy(names, ((0, 1, 1),))  # valid
    with pytest.raises(HierarchyError, match=r"parent of class 'c' is 2, out of range for level 1 with 2"):
        LabelHierarchy(names, ((0, 1, 2),))
    with pytest.raises(HierarchyError, match="level 0: duplicate class name 'a'"):
        LabelHierarchy((("a", "b", "a"), ("X", "Y")), ((0, 1, 1),))
    with pytest.raises(HierarchyError, match="level 1: class.*'Y'.*no children"):
        LabelHierarchy(names, ((0, 0, 0),))
    with pytest.raises(HierarchyError, match="at least one level"):
        LabelHierarchy((), ())
    with pytest.raises(HierarchyError, match="2 levels need 1 parent"):
        LabelHierarchy(names, ())
    with pytest.raises(HierarchyError, match="parents\\[0\\] has 2 entries but level 0 has 3"):
        LabelHierarchy(names, ((0, 1),))
    with pytest.raises(HierarchyError, match="3 level_names"):
        LabelHierarchy(names, ((0, 1, 1),), level_names=("a", "b", "c"))
    with pytest.raises(HierarchyError, match="integer"):
        LabelHierarchy(names, ((0, 1, 1.0),))
    with pytest.raises(HierarchyError, match="level 1 has no classes"):
        LabelHierarchy((("a",), ()), ((0,),))


def test_maps_and_ancestors_errors():
    h = LabelHierarchy((("a", "b", "c"), ("X", "Y"), ("T",)), ((0, 1, 1), (0, 0)))
    assert h.ancestors(2) == (1, 0)
    assert h.sizes == (3, 2, 1)
    np.testing.assert_array_equal(h.parent_map(1), [0, 0])
    for bad in (-1, 3):
        with pytest.raises(HierarchyError, match="out of range"):
            h.ancestors(bad)
    with pytest.raises(HierarchyError, match="parent_map"):
        h.parent_map(2)
    with pytest.raises(HierarchyError, match="composed_map"):
        h.composed_map(3)
    one = LabelHierarchy((("a", "b"),), ())
    assert one.ancestors(1) == () and one.labels_at_all_levels([1, -1]).tolist() == [[1], [-1]]


def test_label_out_of_range(tmp_path):
    h = from_edge_list(write(tmp_path, "c10.tsv", CIFAR10_TSV), CIFAR10_CLASSES)
    with pytest.raises(HierarchyError) as err:
        h.labels_at_all_levels([0, 12, 3], source="train/labels.csv")
    msg = str(err.value)
    assert "12" in msg and "10 classes" in msg and "train/labels.csv" in msg
    with pytest.raises(HierarchyError, match="label -2"):
        h.labels_at_all_levels([0, -2])
    with pytest.raises(HierarchyError, match="integers"):
        h.labels_at_all_levels([0.5])
    assert not h.covers([0, 12])
    assert not h.covers([-2])
    with pytest.raises(HierarchyError) as err:
        h.check_covers(np.array([3, 12, 11]), source="cifar12/train")
    assert str(err.value) == "cifar12/train: the hierarchy does not cover label 12 (it has 10 classes)"
    with pytest.raises(HierarchyError, match="^the hierarchy does not cover label 10 \\(it has 10 classes\\)$"):
        h.check_covers([10])


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------
def test_json_round_trip(tmp_path):
    h = from_edge_list(write(tmp_path, "c10.tsv", CIFAR10_TSV), CIFAR10_CLASSES, level_names=("class", "group", "d"))
    path = tmp_path / "sub" / "c10.json"
    h.to_json(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["c10.json"]  # no temporary left behind
    back = LabelHierarchy.from_json(path)
    assert (back.names, back.parents, back.level_names) == (h.names, h.parents, h.level_names)
    assert json.loads(path.read_text()) == {
        "level_names": ["class", "group", "d"],
        "names": [CIFAR10_CLASSES, ["aircraft_or_ship", "mammal", "non_mammal", "road_vehicle"], ["animal", "vehicle"]],
        "parents": [[0, 3, 2, 1, 1, 1, 2, 1, 0, 3], [1, 0, 0, 1]],
    }
    h.to_json(path)  # overwrite in place
    check_cifar10(load_hierarchy(path, CIFAR10_CLASSES))
    d = h.to_dict()
    again = LabelHierarchy.from_dict(d)
    assert again.names == h.names and again.to_dict() == d


def test_json_errors(tmp_path):
    bad = write(tmp_path, "bad.json", '{"names": [["a"]], "parents": [')
    with pytest.raises(HierarchyError) as err:
        LabelHierarchy.from_json(bad)
    assert str(bad) in str(err.value) and "malformed JSON" in str(err.value)
    missing = write(tmp_path, "missing.json", '{"names": [["a", "b"], ["X"]]}')
    with pytest.raises(HierarchyError) as err:
        LabelHierarchy.from_json(missing)
    assert str(missing) in str(err.value) and "'parents'" in str(err.value)
    out_of_range = write(tmp_path, "range.json", '{"names": [["a", "b"], ["X"]], "parents": [[0, 4]]}')
    with pytest.raises(HierarchyError) as err:
        LabelHierarchy.from_json(out_of_range)
    assert str(out_of_range) in str(err.value) and "'b'" in str(err.value) and "4" in str(err.value)
    with pytest.raises(HierarchyError, match="unknown key.*'parent'"):
        LabelHierarchy.from_dict({"names": [["a"]], "parents": [], "parent": []})
    with pytest.raises(HierarchyError, match="JSON object"):
        LabelHierarchy.from_json(write(tmp_path, "list.json", "[1, 2]"))


def test_load_hierarchy_dispatch(tmp_path):
    h = from_edge_list(write(tmp_path, "c10.tsv", CIFAR10_TSV), CIFAR10_CLASSES)
    h.to_json(tmp_path / "c10.JSON")
    assert load_hierarchy(tmp_path / "c10.JSON").names == h.names
    wrong = list(CIFAR10_CLASSES)
    wrong[3] = "kitten"
    with pytest.raises(HierarchyError) as err:
        load_hierarchy(tmp_path / "c10.JSON", wrong)
    assert "fine class 3 is 'cat'" in str(err.value) and "'kitten'" in str(err.value)
    assert str(tmp_path / "c10.JSON") in str(err.value)
    with pytest.raises(HierarchyError, match="11"):
        load_hierarchy(tmp_path / "c10.JSON", [*CIFAR10_CLASSES, "extra"])
    with pytest.raises(HierarchyError, match="needs classes"):
        load_hierarchy(tmp_path / "c10.tsv")
    with pytest.raises(HierarchyError, match="depths"):
        load_hierarchy(tmp_path / "c10.JSON", depths=(1,))
    forest = write(tmp_path, "forest.txt", "\n".join(f"{b} {a}" for a, b in FOREST_EDGES))
    cut = load_hierarchy(forest, FOREST_CLASSES, depths=(1,), order="parent_child")
    assert cut.names[1] == ("animal", "artifact", "oak")


# ---------------------------------------------------------------------------------------------
# CIFAR-100
# ---------------------------------------------------------------------------------------------
# coarse_labels of the official CIFAR-100 train file, indexed by fine label
CIFAR100_COARSE_OF_FINE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
]  # fmt: skip


def test_cifar100():
    h = cifar100()
    assert LabelHierarchy.cifar100() is h
    assert h.sizes == (100, 20) and h.level_names == ("fine", "coarse")
    fine, coarse = h.names
    assert list(fine) == sorted(fine)
    assert fine[:10] == (
        "apple",
        "aquarium_fish",
        "baby",
        "bear",
        "beaver",
        "bed",
        "bee",
        "beetle",
        "bicycle",
        "bottle",
    )
    assert coarse == (
        "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
        "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
        "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
        "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
        "vehicles_1", "vehicles_2",
    )  # fmt: skip
    assert np.bincount(h.parent_map(0), minlength=20).tolist() == [5] * 20
    np.testing.assert_array_equal(h.composed_map(1), CIFAR100_COARSE_OF_FINE)
    pairs = {
        "maple_tree": "trees",
        "bus": "vehicles_1",
        "tractor": "vehicles_2",
        "whale": "aquatic_mammals",
        "mushroom": "fruit_and_vegetables",
        "lamp": "household_electrical_devices",
        "wardrobe": "household_furniture",
        "cockroach": "insects",
        "lobster": "non-insect_invertebrates",
        "baby": "people",
        "aquarium_fish": "fish",
        "sweet_pepper": "fruit_and_vegetables",
        "skunk": "medium_mammals",
        "lawn_mower": "vehicles_2",
    }
    for f, c in pairs.items():
        assert coarse[h.parents[0][fine.index(f)]] == c
    members = {c: sorted(fine[i] for i in range(100) if h.parents[0][i] == j) for j, c in enumerate(coarse)}
    assert members["aquatic_mammals"] == ["beaver", "dolphin", "otter", "seal", "whale"]
    assert members["fish"] == ["aquarium_fish", "flatfish", "ray", "shark", "trout"]
