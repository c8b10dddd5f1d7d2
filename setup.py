"""Packaging for attnlens.

The repository keeps the card's folders (``kernels/``, ``attention/``, ``viz/``) and maps them into
one import package, so nothing called ``kernels``, ``attention`` or ``viz`` is ever installed at top
level (all three names are taken on PyPI, and transformers imports a ``kernels`` package when it
finds one).
"""

import re
from pathlib import Path

from setuptools import setup

PACKAGE_DIR = {
    "attnlens": "attention",
    "attnlens.integrations": "attention/integrations",
    "attnlens.integrations.huggingface": "attention/integrations/huggingface",
    "attnlens.tiny": "attention/tiny",
    "attnlens.kernels": "kernels",
    "attnlens.viz": "viz",
}

HERE = Path(__file__).parent
LONG_DESCRIPTION = (HERE / "README.md").read_text(encoding="utf-8")
# The version is written once, in attention/_version.py (attnlens.__version__).
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "attention" / "_version.py").read_text(), re.M).group(1)

setup(
    name="attnlens",
    version=VERSION,
    description=(
        "Fused Triton attention kernels that return the exact attention weights, "
        "with drop-in modules and attention visualisation"
    ),
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=list(PACKAGE_DIR),
    package_dir=PACKAGE_DIR,
    # The explorer page inlines these two files (attnlens.viz.explorer reads them next to itself).
    package_data={"attnlens.viz": ["explorer.js", "explorer.css"]},
    install_requires=[
        "torch>=2.4",
        # Triton ships Linux wheels only; elsewhere attnlens runs its PyTorch reference path.
        "triton>=3.6; platform_system == 'Linux'",
        "numpy",
        "matplotlib>=3.5",
    ],
    extras_require={
        # bertviz: tests/integrations/test_minilm.py checks that it draws the weights attnlens returns.
        # selenium: tests/viz/test_explorer_browser.py drives headless Chromium (a system package).
        "test": ["pytest", "pytest-benchmark", "pytest-xdist", "hypothesis", "pandas", "tqdm", "bertviz", "selenium"],
        "demo": ["tqdm"],
        "hf": ["transformers>=4.53"],
        "dev": ["ruff", "pandas"],
        # python -m attnlens app: the Streamlit explorer app (attnlens.app).
        "app": ["streamlit>=1.36"],
    },
    entry_points={"console_scripts": ["attnlens=attnlens.__main__:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
