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
