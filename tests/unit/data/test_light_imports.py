"""The small actors' modules start without torch: Ray imports an actor class's module (and its package) in every
fresh actor process, so the epoch clock and the bad-image ledgers must not pay torch's import there."""
import subprocess
import sys

import pytest


def test_actor_modules_and_the_package_do_not_import_torch():
    code = ("import sys, hierclr.data, hierclr.data.epoch_clock, hierclr.data.bad_images; "
            "print(sorted(m for m in ('torch', 'torchvision', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_package_names_resolve_lazily_to_their_modules():
    from hierclr import data
    from hierclr.data.streams import train_stream
    from hierclr.labels import LabelHierarchy

    assert data.train_stream is train_stream and data.LabelHierarchy is LabelHierarchy
    assert all(hasattr(data, name) for name in data.__all__)
    with pytest.raises(AttributeError, match="no_such_name"):
        data.no_such_name  # noqa: B018
