"""``manifest.json``: what a directory of native parquet shards holds, written by ``prepare-data``.

Readers trust nothing else: the shard list (with row counts, the id each shard starts at, byte size
and a sha256 of its content), the class names, the label hierarchy and image statistics.
"""
from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hierclr.io.errors import DataFormatError
from hierclr.io.fs import Location

MANIFEST_NAME = "manifest.json"
FORMAT = "hierclr-parquet"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShardInfo(_Model):
    file: str = Field(description="file name relative to the manifest's directory")
    rows: int = Field(ge=0)
    first_id: int = Field(ge=0, description="ids in the shard are first_id .. first_id + rows - 1, in row order")
    bytes: int = Field(ge=0)
    sha256: str


class SizeStats(_Model):
    min: int
    max: int
    mean: float


class ImageStats(_Model):
    count: int
    height: SizeStats
    width: SizeStats
    formats: dict[str, int]


class SkippedImage(_Model):
    key: str
    reason: str


class Manifest(_Model):
    format: str = FORMAT
    version: int = 1
    split: str
    num_rows: int = Field(ge=0)
    classes: tuple[str, ...] = ()
    hierarchy: dict | None = None
    shards: tuple[ShardInfo, ...]
    image_stats: ImageStats | None = None
    skipped: tuple[SkippedImage, ...] = ()
    source: str = ""
    options: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.format != FORMAT:
            raise ValueError(f"format is {self.format!r}, expected {FORMAT!r}")
        if sum(s.rows for s in self.shards) != self.num_rows:
            raise ValueError(f"num_rows {self.num_rows} != sum of shard rows {sum(s.rows for s in self.shards)}")
        next_id = 0
        for s in self.shards:
            if s.first_id != next_id:
                raise ValueError(f"shard {s.file} starts at id {s.first_id}, expected {next_id} (ids must be 0..N-1)")
            next_id += s.rows
        return self

    def write(self, directory: Location) -> None:
        text = json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=False)
        directory.join(MANIFEST_NAME).write_bytes_atomic(text.encode())

    @classmethod
    def read(cls, directory: Location) -> Manifest:
        loc = directory.join(MANIFEST_NAME)
        if not loc.is_file():
            raise DataFormatError(f"missing {MANIFEST_NAME} in {directory.uri}: not a prepared shard directory "
                                  f"(run `hierclr prepare-data`, or read it as format=webdataset/imagefolder)")
        try:
            return cls.model_validate(json.loads(loc.read_text()))
        except (json.JSONDecodeError, ValidationError) as e:
            raise DataFormatError(f"invalid manifest {loc.uri}: {e}") from e
