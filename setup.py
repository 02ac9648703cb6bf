"""fullyqt: a fairseq plugin for fully quantized, pruned and Kronecker-factorized Transformers."""
from setuptools import find_packages, setup

setup(
    name="fullyqt",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fullyqt", "fullyqt.*"]),
    package_data={"fullyqt": ["data/corpora/*", "quant/kernels/*.c", "quant/kernels/*.h"]},
    install_requires=[
        # fairseq 0.12.2 does not import on Python 3.11; this PyPI fork does (imports as fairseq).
        "fairseq-fixed==0.12.3.1",
        # The CPU build of torch the fork is tested with; an open range lets pip pull a
        # multi-GB CUDA build of a newer release.
        "torch==2.13.0",
        "sacrebleu>=2.3",
        "sentencepiece>=0.1.99",
        "numpy>=1.24",
        "pyyaml>=6",
        "matplotlib>=3.7",  # the benchmark's pareto plot
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3", "ctranslate2>=4.0"],
        "deploy": ["ctranslate2>=4.0"],
    },
    entry_points={
        "console_scripts": [
            "fullyqt-coverage=fullyqt.quant.coverage:main",
            "fullyqt-export=fullyqt.export.cli:main",
            "fullyqt-compress=fullyqt.compress.cli:main",
            "fullyqt-distill-data=fullyqt.distill.corpus:main",
            "fullyqt-options=fullyqt.options:main",
        ],
    },
)
