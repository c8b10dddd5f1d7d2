"""The package's front door (attention/__init__.py): ``import attnlens`` loads the attention library
only, and the teaching kit's names and modules at their former top-level homes are the kit's own
objects, loaded on first use."""

import json
import subprocess
import sys

import pytest

import attnlens
import attnlens.masks
from attnlens import tiny
from attnlens.tiny.masks import EncoderDecoderMasks

# The kit's names that attnlens.__all__ used to list, and the kit name each one is now.
FORMER_TOP_LEVEL = {
    "BOS_ID": "BOS_ID",
    "EOS_ID": "EOS_ID",
    "NUM_SPECIAL_TOKENS": "NUM_SPECIAL_TOKENS",
    "PAD_ID": "PAD_ID",
    "TASKS": "TASKS",
    "DatasetSummary": "DatasetSummary",
    "SyntheticData": "SyntheticData",
    "generate_synthetic_data": "generate_synthetic_data",
    "validate_dataset": "validate_dataset",
    "Masks": "EncoderDecoderMasks",
    "create_masks": "create_masks",
    "DecoderWeights": "DecoderWeights",
    "TransformerDecoderLayer": "TransformerDecoderLayer",
    "TransformerEncoderLayer": "TransformerEncoderLayer",
    "TransformerModel": "TransformerModel",
    "build_transformer_model": "build_transformer_model",
    "DEFAULT_TASK_CONFIG": "DEFAULT_TASK_CONFIG",
    "TaskData": "TaskData",
    "TrainingHistory": "TrainingHistory",
    "evaluate_model": "evaluate_model",
    "generation_accuracy": "generation_accuracy",
    "make_dataloaders": "make_dataloaders",
    "train_model": "train_model",
    "train_on_task": "train_on_task",
    "warmup_schedule": "warmup_schedule",
}
LIBRARY_MODULES = {
    "attnlens.capture",
    "attnlens.functional",
    "attnlens.masks",
    "attnlens.modules",
    "attnlens.positional",
    "attnlens.reference",
}

# Run in a fresh interpreter: in this one other tests have long imported the kit and matplotlib.
# torch itself imports tqdm when it is installed (torch.hub); the child forgets those modules after
# importing torch, so any tqdm module present at the end was imported by attnlens.
_CHILD = """
import json, sys
import torch
for name in [m for m in sys.modules if m == "tqdm" or m.startswith("tqdm.")]:
    del sys.modules[name]
import attnlens
namespace = {}
exec("from attnlens import *", namespace)
print(json.dumps({"modules": sorted(sys.modules), "star": sorted(n for n in namespace if n != "__builtins__")}))
"""


@pytest.fixture(scope="module")
def fresh_import():
    done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_attnlens_loads_the_library_only(fresh_import):
    modules = fresh_import["modules"]
    kit_or_pictures = [
        m
        for m in modules
        if m.startswith(("attnlens.tiny", "attnlens.viz"))
        or m in ("attnlens.data", "attnlens.model", "attnlens.training", "attnlens.tour")
    ]
    assert kit_or_pictures == []
    assert [m for m in modules if m.split(".")[0] in ("matplotlib", "tqdm")] == []
    assert LIBRARY_MODULES <= set(modules)


def test_star_import_gives_the_library_and_not_the_kit(fresh_import):
    # The child's modules were listed after the star import, so the first test covers its imports.
    assert fresh_import["star"] == sorted(attnlens.__all__)
    assert not set(FORMER_TOP_LEVEL) & set(attnlens.__all__)


def test_all_lists_names_that_exist():
    for name in attnlens.__all__:
        assert hasattr(attnlens, name), name
    for name in tiny.__all__:
        assert hasattr(tiny, name), name
    # Every kit name attnlens answers to is listed by the kit.
    assert set(FORMER_TOP_LEVEL.values()) <= set(tiny.__all__)


@pytest.mark.parametrize("name", sorted(FORMER_TOP_LEVEL))
def test_former_top_level_names_are_the_kit_objects(name):
    assert getattr(attnlens, name) is getattr(tiny, FORMER_TOP_LEVEL[name])
    assert name in dir(attnlens)


def test_former_module_paths_are_the_kit_modules():
    import attnlens.data
    import attnlens.model
    import attnlens.tour
    import attnlens.training
    from attnlens.data import PAD_ID

    assert attnlens.data is tiny.data and PAD_ID is tiny.PAD_ID
    assert attnlens.model is tiny.model
    assert attnlens.training is tiny.training
    assert attnlens.tour is sys.modules["attnlens.tiny.tour"]
    assert sys.modules["attnlens.data"] is tiny.data
    # the encoder-decoder batch masks, at their former home
    assert attnlens.masks.Masks is EncoderDecoderMasks is attnlens.Masks
    assert attnlens.masks.create_masks is tiny.create_masks
    # the subpackages are attributes without an import of their own
    assert attnlens.tiny is tiny and attnlens.viz is sys.modules["attnlens.viz"]


def test_unknown_names_raise_attribute_error_naming_them():
    with pytest.raises(AttributeError, match="'attnlens' has no attribute 'no_such_name'"):
        attnlens.no_such_name  # noqa: B018
    with pytest.raises(AttributeError, match="'attnlens.masks' has no attribute 'EncoderDecoderMasks'"):
        attnlens.masks.EncoderDecoderMasks  # noqa: B018 (its home is attnlens.tiny.masks)
    assert not hasattr(attnlens, "no_such_name")
