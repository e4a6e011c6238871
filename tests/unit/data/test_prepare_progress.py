"""prepare-data's resume records: a finished split leaves no ``_progress/``; a resumed one says what it kept
(in-process conversion of a real ImageFolder, no Ray)."""
from __future__ import annotations

import pytest
from helpers.image_files import make_image_folder

from hierclr.data import prepare
from hierclr.data.prepare import PROGRESS_DIR, PrepareConfig, plan_splits, prepare_split
from hierclr.io.fs import resolve


def test_a_finished_split_leaves_no_progress_and_a_resumed_one_says_what_it_kept(tmp_path, monkeypatch, capsys):
    make_image_folder(tmp_path / "raw" / "train", per_class=4)  # 12 images -> 3 shards of 4
    cfg = PrepareConfig(source=str(tmp_path / "raw"), out=str(tmp_path / "out"), shard_size=4)
    (plan,) = plan_splits(cfg)
    out = resolve(tmp_path / "out" / "train")

    real, calls = prepare._write_shard, []

    def crash_on_third(*args):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt  # the conversion is interrupted after two shards
        return real(*args)

    monkeypatch.setattr(prepare, "_write_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare_split(plan, out, cfg, window=1, in_process=True)
    assert len(list((tmp_path / "out" / "train" / PROGRESS_DIR).glob("*.json"))) == 2
    assert not (tmp_path / "out" / "train" / "manifest.json").exists()
    assert "resuming" not in capsys.readouterr().err  # a fresh conversion says nothing of the kind

    monkeypatch.setattr(prepare, "_write_shard", real)
    manifest = prepare_split(plan, out, cfg, window=1, in_process=True)
    err = capsys.readouterr().err
    assert "prepare-data train: resuming: 2 of 3 shards already written and verified, kept; writing 1" in err
    assert manifest.num_rows == 12 and len(manifest.shards) == 3
    assert (tmp_path / "out" / "train" / "manifest.json").is_file()
    assert not (tmp_path / "out" / "train" / PROGRESS_DIR).exists()
