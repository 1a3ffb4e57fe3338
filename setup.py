"""filtertron: a distributed GPT training framework with image-filtering attention."""

from setuptools import find_packages, setup

setup(
    name="filtertron",
    version="0.1.0",
    description="Distributed GPT training with bilateral, twicing attention and GRC residuals",
    python_requires=">=3.11",
    packages=find_packages(include=["filtertron", "filtertron.*"]),
    install_requires=[
        # torch is installed first by the Makefile (torch==2.13.0, CPU build on our machines);
        # the range here accepts it without pulling another build.
        "torch>=2.5,<=2.14.1",
        "numpy",
        "pyyaml>=6",
        "tqdm",
        "matplotlib",
        "deepspeed==0.19.8",
        "megatron-core==0.16.1",
        "sentencepiece>=0.2",
        "tokenizers",
        "datasets",
        "pyarrow",
        "tensorboard",
        # scaling-law fits and sweeps (filtertron.scaling)
        "scipy>=1.11",
        "threadpoolctl>=3",
        "submitit>=1.5",
    ],
    extras_require={
        "mpi": ["mpi4py"],
        "triton": ["triton"],
        "dev": ["pytest", "ruff"],
        # filtertron export / import and the lm-eval task; pinned: transformers' API moves
        # quickly, and these are the versions tested with torch 2.13 (lm-eval[hf] adds
        # accelerate and peft).
        "hf": ["transformers==5.24.0", "safetensors==0.8.0", "lm-eval[hf]==0.4.13"],
    },
    entry_points={"console_scripts": ["filtertron=filtertron.cli:main"]},
)
