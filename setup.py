"""hierclr: hierarchical contrastive representation learning (HCSC and friends) at cluster scale on Ray."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

INSTALL_REQUIRES = [
    # torch 2.15 on PyPI pulls several GB of CUDA packages; stay on the 2.4-2.14 line.
    "torch>=2.4,<2.15",
    "torchvision>=0.19,<0.30",
    "numpy>=1.24",
    "faiss-cpu>=1.8,<2",
    # RandomSeedConfig (per-epoch reseeding) is used by the streams; "default" brings the dashboard: the job
    # server behind `ray job submit`, and the State API Train's placement-group cleaner needs.
    "ray[default,train,data,tune]>=2.60,<3",
    "pyarrow>=14",
    "mlflow>=2.16,<4",
    "scikit-learn>=1.3",
    "matplotlib>=3.7",  # sweep summaries and hierarchy plots (Agg, no display)
    "scipy>=1.10",
    "pydantic>=2.5,<3",
    "pyyaml>=6",
    "pillow>=10",
    "tqdm>=4.60",
]

EXTRAS = {
    # GPU faiss for the clustering service: CUDA 12 runtime from PyPI (driver >= R530), compute capability 7.0-8.9.
    # Not faiss-gpu-cu13-cuvs: Python 3.12 / glibc 2.39 only, CUDA 13.0 pins that clash with torch's, cuVS off PyPI.
    # Without it (or on Hopper/Blackwell) `backend: auto` clusters on the GPU with the torch backend (README).
    "gpu": ["faiss-gpu-cu12>=1.9,<2; python_version < '3.14'"],
    "dev": ["pytest>=8", "pytest-timeout>=2.3", "ruff>=0.6"],
}

setup(
    name="hierclr",
    version="0.1.0",
    description="Hierarchical contrastive representation learning (HCSC, VarCon, CLCE, HCAL) on Ray",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["hierclr", "hierclr.*"]),
    package_data={"hierclr": ["presets/*.yaml", "presets/sweeps/*.yaml", "presets/supervised/*.yaml",
                              "presets/evaluate/*.yaml", "labels/*.json",
                              "runtime/*.yaml"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["hierclr=hierclr.cli:main"]},
)
