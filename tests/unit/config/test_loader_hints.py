"""Error hints of the one config reader: a misspelt key names the closest fields of its section, a comma list
without brackets is told to use them."""
import pytest

from hierclr.config.pretrain import load_config
from hierclr.config.supervised import load_supervised_config


def test_misspelt_keys_suggest_the_fields_of_their_section():
    with pytest.raises(ValueError) as e:
        load_config("demo", ["optim.epoch=3", "clusterin.sizes=[3]", "loss.temprature=0.1"])
    msg = str(e.value)
    assert "optim.epoch: Extra inputs are not permitted (got 3); did you mean optim.epochs?" in msg
    assert "clusterin: Extra inputs are not permitted; did you mean clustering?" in msg
    assert "did you mean loss.temperature?" in msg


def test_no_suggestion_for_a_name_like_no_field():
    with pytest.raises(ValueError) as e:
        load_config("demo", ["optim.zzzzzz=1"])
    assert "optim.zzzzzz: Extra inputs are not permitted" in str(e.value) and "did you mean" not in str(e.value)


def test_comma_lists_are_told_to_use_brackets():
    with pytest.raises(ValueError, match=r"write a list in brackets: \[500,200\]"):
        load_config("demo", ["clustering.sizes=500,200"])
    with pytest.raises(ValueError, match=r"did you mean optim.epochs\?"):
        load_supervised_config("digits-finetune", ["optim.epoch=2"])


def test_list_presets_prints_names_with_their_comment_and_imports_no_torch(tmp_path):
    import subprocess
    import sys

    from hierclr.config.loader import preset_table

    (tmp_path / "b.yaml").write_text("# Second preset. More words that are not shown when too long.\nname: b\n")
    (tmp_path / "a.yaml").write_text("# First line\n# continued.\nname: a\n")
    (tmp_path / "c.yaml").write_text("name: c\n")
    (tmp_path / "d.yaml").write_text("# MoCo (He et al. 2020). More words here.\nname: d\n")
    assert preset_table(tmp_path, width=30).splitlines() == [
        "a  First line continued.", "b  Second preset", "c", "d  MoCo (He et al. 2020)"]
    code = ("import sys; from hierclr.cli import main; main(['pretrain', '--list-presets']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "False" and any(line.startswith("demo ") for line in out.splitlines())
