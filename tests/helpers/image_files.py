"""Real image files in real layouts for the data tests: JPEG/PNG bytes from PIL, ImageFolder trees,
WebDataset tar shards. Every writer returns what a reader must give back."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(rng: np.random.Generator, h: int, w: int, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def make_image_folder(root: Path, classes=("cat", "dog", "eel"), per_class: int = 5, *, seed: int = 0,
                      nested: bool = False, corrupt: int = 0) -> dict[str, int]:
    """``root/<class>/[images/]<i>.jpg|png``; returns relative path -> label. ``corrupt`` extra files in the
    first class are not images (they get labels too: a reader sees them and must report them)."""
    rng = np.random.default_rng(seed)
    expected = {}
    for label, c in enumerate(classes):
        d = root / c / "images" if nested else root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fmt = "PNG" if i % 2 else "JPEG"
            name = f"{c}_{i:03d}.{'png' if fmt == 'PNG' else 'jpg'}"
            (d / name).write_bytes(image_bytes(rng, 24 + i, 30 + label, fmt))
            expected[str((d / name).relative_to(root))] = label
    for j in range(corrupt):
        d = root / classes[0] / "images" if nested else root / classes[0]
        (d / f"zz_corrupt_{j}.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * (j + 1))
        expected[str((d / f"zz_corrupt_{j}.jpg").relative_to(root))] = 0
    return expected


def write_tar_shards(directory: Path, counts=(4, 3, 5), *, num_classes: int = 3, seed: int = 0,
                     label_override: dict[int, int] | None = None) -> list[tuple[bytes, int]]:
    """WebDataset shards ``shard-000000.tar`` ... with ``<key>.jpg`` + ``<key>.cls`` (+ a ``.json`` member
    to ignore); returns (image bytes, label) in global sample order."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    samples, n = [], 0
    for s, count in enumerate(counts):
        with tarfile.open(directory / f"shard-{s:06d}.tar", "w") as tar:
            for _ in range(count):
                data = image_bytes(rng, 20, 20)
                label = int(rng.integers(0, num_classes))
                if label_override and n in label_override:
                    label = label_override[n]
                for ext, payload in (("jpg", data), ("cls", str(label).encode()), ("json", b"{}")):
                    info = tarfile.TarInfo(f"sample{n:07d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                samples.append((data, label))
                n += 1
    return samples
