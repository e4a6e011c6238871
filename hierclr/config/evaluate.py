"""The config of ``hierclr evaluate``: which encoder, which data, which protocols with which settings.

The defaults are the paper's protocols (spec "Evaluation protocols"); a preset
(``hierclr/presets/evaluate/<name>.yaml``) or YAML file plus ``--set`` overrides, validated before Ray starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from hierclr.config.loader import EVALUATE_PRESET_DIR, Section, list_presets, load_tree, validate
from hierclr.config.sections import DataSection, ResourcesSection, TrackingSection
from hierclr.eval.precision import FeaturePrecision
from hierclr.io.fs import absolute

Protocol = Literal["knn", "linear", "semi", "clustering", "hierarchy"]


class EvalModelSection(Section):
    backbone: Literal["resnet10", "resnet18", "resnet50"] = "resnet50"
    cifar_stem: bool = False


class KNNProtocol(Section):
    ks: tuple[int, ...] = (10, 20, 100, 200)
    temperature: float = Field(0.07, gt=0)
    backend: Literal["torch", "faiss"] = Field("faiss", description="neighbour search (faiss: IndexFlatIP, chunked)")
    chunk_size: int = Field(1024, ge=1, description="val rows searched at once")


class ClusteringProtocol(Section):
    """Two clustering protocols: ``prototypes`` (the paper's, HCSC Table 4 / App. A as PCL: the checkpoint's own
    prototypes against the labels of data.train, the split they were computed on) and ``kmeans`` (the HIRL
    evaluation script's: K-means on the features of ``split``)."""

    methods: tuple[Literal["prototypes", "kmeans"], ...] = Field(
        ("prototypes", "kmeans"), description="prototypes: the paper's (Table 4); kmeans: the HIRL script's")
    prototype_levels: tuple[int, ...] | None = Field(None, description="prototype levels scored (null: all)")
    ks: tuple[int, ...] | None = Field(None, description="K-means K values; null: the number of classes and "
                                                         "overcluster x that")
    overcluster: int = Field(10, ge=2)
    nredo: int = Field(5, ge=1)
    split: Literal["train", "val"] = Field("val", description="which split's features K-means clusters")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"clustering.methods must name prototypes and/or kmeans once each, got {list(v)}")
        return v


class HierarchyProtocol(Section):
    prototypes: bool = Field(True, description="also score the checkpoint's own hierarchical prototypes (when it "
                                               "has them and data.train is the split they were computed on)")
    max_samples: int | None = Field(None, ge=100, description="null (default): AMI over every row, as the paper "
                                                             "reports; N: a seeded N-row subsample, faster but "
                                                             "biased low")


class TrainedProtocol(Section):
    """A protocol that trains (linear probe, semi-supervised fine-tuning): a ``hierclr finetune`` run from a
    supervised preset, with the encoder as ``model.init``, nested in MLflow under the evaluation run."""

    config: str = Field(..., description="finetune preset or file (hierclr/presets/supervised)")
    set: tuple[str, ...] = Field((), description="extra KEY=VALUE overrides of that config")

    def config_path(self) -> str:
        """``config`` with a file path (one with a directory or a suffix) made absolute; a preset name as is."""
        return absolute(self.config) if "/" in self.config or Path(self.config).suffix else self.config


class SemiProtocol(TrainedProtocol):
    """Semi-supervised fine-tuning on label subsets: the standard file lists when ``subset_files`` gives them
    (ImageNet's ``1percent.txt`` and ``10percent.txt``, one per fraction, same order), seeded per-class draws of
    each fraction otherwise."""

    fractions: tuple[float, ...] = Field((0.01, 0.1), description="label fractions (names the runs: semi0.01, ...)")
    subset_files: tuple[str, ...] = Field((), description="file lists, one per fraction (e.g. [.../1percent.txt, "
                                                          ".../10percent.txt]); empty: seeded per-class draws")

    @model_validator(mode="after")
    def _files(self) -> SemiProtocol:
        if self.subset_files and len(self.subset_files) != len(self.fractions):
            raise ValueError(f"semi.subset_files has {len(self.subset_files)} files for {len(self.fractions)} "
                             "semi.fractions: give one file list per fraction, in the same order")
        return self


class EvaluateConfig(Section):
    name: str = "hierclr-eval"
    source: str = Field(..., description="hierclr checkpoint / run dir / best_encoder.pt, torchvision state dict, "
                                         "official MoCo-style checkpoint, or mlflow:<run id>[/<model>] (default model: "
                                         "encoder_last)")
    seed: int = 0
    model: EvalModelSection = EvalModelSection()
    data: DataSection = DataSection()
    protocols: tuple[Protocol, ...] = ("knn", "clustering", "hierarchy")
    knn: KNNProtocol = KNNProtocol()
    clustering: ClusteringProtocol = ClusteringProtocol()
    hierarchy: HierarchyProtocol = HierarchyProtocol()
    linear: TrainedProtocol = TrainedProtocol(config="imagenet-r50-linear")
    semi: SemiProtocol = SemiProtocol(config="imagenet-r50-semi")
    resources: ResourcesSection = ResourcesSection()
    feature_precision: FeaturePrecision = Field("fp32", description="fp32 (default), or bf16 / fp16 autocast of the "
                                                                    "trunk on GPUs (faster, lower precision)")
    tracking: TrackingSection = TrackingSection()
    output_dir: str = Field("./hierclr_eval", description="results.json, plots, features, protocol runs (a local "
                                                          "or shared path: the feature workers write here)")
    plot: Literal["tsne", "none"] = "tsne"
    plot_points: int = Field(5000, ge=10)

    def with_absolute_paths(self) -> EvaluateConfig:
        """A copy with every local path absolute (``source``, the data, ``output_dir``, the trained protocols'
        config files, ``semi.subset_files``); URIs (``mlflow:``, ``s3://``, ``builtin://`` ...) unchanged. Done before
        Ray starts: the feature and protocol workers run in other directories."""
        return self.model_copy(update={
            "source": absolute(self.source), "data": self.data.with_absolute_paths(),
            "output_dir": absolute(self.output_dir),
            "linear": self.linear.model_copy(update={"config": self.linear.config_path()}),
            "semi": self.semi.model_copy(update={"config": self.semi.config_path(),
                                                 "subset_files": tuple(absolute(f) for f in self.semi.subset_files)}),
        })

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        if not self.protocols:
            raise ValueError("protocols is empty: choose from knn, linear, semi, clustering, hierarchy")
        if len(set(self.protocols)) != len(self.protocols):
            raise ValueError(f"protocols lists one twice: {list(self.protocols)}")
        if self.data.val is None:
            raise ValueError("data.val is required: every protocol reports on a labelled val split")
        return self


def list_evaluate_presets() -> list[str]:
    return list_presets(EVALUATE_PRESET_DIR)


def load_evaluate_config(source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
                         ) -> EvaluateConfig:
    return validate(EvaluateConfig, load_tree(source, overrides, EVALUATE_PRESET_DIR), source)
