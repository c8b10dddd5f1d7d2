"""Synthetic sequence-to-sequence data whose correct attention is known, and its validation.

Token ids: ``PAD_ID = 0``, ``BOS_ID = 1``, ``EOS_ID = 2`` are special; content tokens are
``NUM_SPECIAL_TOKENS .. vocab_size - 1``. Every sentence is a source of content tokens and a
target made from it by a task:

- ``copy``: target = source (the decoder should attend to the same source position);
- ``reverse``: target = source reversed (it should attend to the mirrored position);
- ``sort``: target = source sorted ascending (it should attend to where each value sits);
- ``random``: target = independent random content tokens of the same length (no structure; a
  control where no attention pattern can help).

Layout of one sentence of length ``L`` (``M = max_length``)::

    src  [M]      c1 c2 ... cL PAD ... PAD
    tgt  [M + 2]  BOS t1 ... tL EOS PAD ... PAD

The decoder reads ``tgt[:, :-1]`` and learns to predict ``tgt[:, 1:]``.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.utils.data import Dataset

from attnlens._checks import check_int

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "NUM_SPECIAL_TOKENS",
    "PAD_ID",
    "TASKS",
    "DatasetSummary",
    "SyntheticData",
    "generate_synthetic_data",
    "validate_dataset",
]

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
NUM_SPECIAL_TOKENS = 3
# Fewer than 2 content tokens would make every task trivial (one possible sentence per length).
MIN_CONTENT_TOKENS = 2
TASKS = ("copy", "reverse", "sort", "random")


def _check_task(task: object) -> str:
    if not isinstance(task, str):
        raise TypeError(f"task must be a str, one of {', '.join(TASKS)}; got {type(task).__name__}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    return task


def _positions_in_sentence(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Bool ``[num, width]``: True at positions ``< length`` of each row."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def _target_content(
    task: str, src: torch.Tensor, lengths: torch.Tensor, generator: Optional[torch.Generator], vocab_size: int
) -> torch.Tensor:
    """The target tokens ``[num, max_length]`` (content then PAD) that ``task`` makes of ``src``.

    ``generator`` is only used by ``random``.
    """
    num, max_length = src.shape
    inside = _positions_in_sentence(lengths, max_length)
    if task == "copy":
        return src.clone()
    if task == "reverse":
        # Position p of the target takes source position L - 1 - p; outside the sentence the
        # index is clamped to stay in range and the value replaced by PAD below.
        positions = torch.arange(max_length)[None, :]
        source_index = (lengths[:, None] - 1 - positions).clamp(min=0)
        return torch.where(inside, src.gather(1, source_index), torch.full_like(src, PAD_ID))
    if task == "sort":
        # PAD (0) would sort first; give padding a value above every content token so it stays
        # at the end, then put PAD back.
        above_vocab = torch.full_like(src, vocab_size)
        ordered, _ = torch.where(inside, src, above_vocab).sort(dim=1, stable=True)
        return torch.where(inside, ordered, torch.full_like(src, PAD_ID))
    # random: independent content tokens, same lengths as the source
    content = torch.randint(NUM_SPECIAL_TOKENS, vocab_size, (num, max_length), generator=generator)
    return torch.where(inside, content, torch.full_like(content, PAD_ID))


def _assemble_target(content: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``[num, max_length + 2]``: BOS, the content, EOS right after it, then PAD."""
    num, max_length = content.shape
    tgt = torch.full((num, max_length + 2), PAD_ID, dtype=torch.long)
    tgt[:, 0] = BOS_ID
    tgt[:, 1 : max_length + 1] = content
    tgt[torch.arange(num), lengths + 1] = EOS_ID
    return tgt


class SyntheticData(Dataset):
    """A synthetic sequence-to-sequence dataset (see the module docstring for the layout).

    Attributes:
        src: LongTensor ``[num, max_length]``, each row its content tokens then PAD.
        tgt: LongTensor ``[num, max_length + 2]``, each row BOS, the target, EOS, then PAD.
        lengths: LongTensor ``[num]``, the source (and target) length of each sentence, >= 1.
        ids: LongTensor ``[num]``, unique sentence ids (``0 .. num - 1`` when generated; a
            ``split`` keeps the original ids).
        task, vocab_size, max_length: how it was made.

    ``data[i]`` is ``(src[i], tgt[i])``, so ``DataLoader(data, batch_size=B)`` yields
    ``(src [B, max_length], tgt [B, max_length + 2])``. Construct it with
    ``generate_synthetic_data``; the constructor stores what it is given without checking
    (``validate_dataset`` checks).
    """

    def __init__(
        self,
        src: torch.Tensor,
        tgt: torch.Tensor,
        lengths: torch.Tensor,
        ids: torch.Tensor,
        task: str,
        vocab_size: int,
        max_length: int,
    ) -> None:
        self.src = src
        self.tgt = tgt
        self.lengths = lengths
        self.ids = ids
        self.task = task
        self.vocab_size = vocab_size
        self.max_length = max_length

    @property
    def sentences(self) -> List[List[int]]:
        """The source sentences without padding, as lists of token ids (computed on access)."""
        return [row[:length] for row, length in zip(self.src.tolist(), self.lengths.tolist())]

    @property
    def targets(self) -> List[List[int]]:
        """The target sentences without BOS, EOS and padding, as lists of token ids."""
        return [row[1 : length + 1] for row, length in zip(self.tgt.tolist(), self.lengths.tolist())]

    def __len__(self) -> int:
        return int(self.src.shape[0])

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(src [max_length], tgt [max_length + 2])`` of sentence row ``index``."""
        return self.src[index], self.tgt[index]

    def __repr__(self) -> str:
        return (
            f"SyntheticData(task={self.task!r}, num_sentences={len(self)}, "
            f"vocab_size={self.vocab_size}, max_length={self.max_length})"
        )

    def subset(self, rows: torch.Tensor) -> "SyntheticData":
        """A new dataset of the given rows (a LongTensor of row indices), ids kept."""
        return SyntheticData(
            self.src[rows],
            self.tgt[rows],
            self.lengths[rows],
            self.ids[rows],
            self.task,
            self.vocab_size,
            self.max_length,
        )

    def split(self, fraction: float, seed: int = 0) -> Tuple["SyntheticData", "SyntheticData"]:
        """Shuffle the sentences with ``seed`` and return ``(train, held_out)``.

        ``fraction`` in [0, 1] is the share **held out**: ``held_out`` gets
        ``round(fraction * len(self))`` sentences, ``train`` the rest; every sentence lands in
        exactly one part and keeps its id.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
            raise TypeError(f"fraction must be a float in [0, 1], got {type(fraction).__name__}")
        fraction = float(fraction)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1] (the share held out), got {fraction}")
        seed = check_int("seed", seed)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=generator)
        num_held_out = int(round(fraction * len(self)))
        return self.subset(order[num_held_out:]), self.subset(order[:num_held_out])


def generate_synthetic_data(
    num_sentences: int, vocab_size: int, max_length: int, task: str = "copy", *, min_length: int = 1, seed: int = 0
) -> SyntheticData:
    """Generate ``num_sentences`` source/target pairs for ``task``.

    Source lengths are uniform in ``[min_length, max_length]``, source tokens uniform over the
    content tokens ``NUM_SPECIAL_TOKENS .. vocab_size - 1``; the target follows from the task
    (``copy``, ``reverse``, ``sort`` or ``random``, see the module docstring). The result depends
    only on the arguments: the draws come from a private ``torch.Generator`` seeded with ``seed``,
    never from torch's global random state.

    Returns a ``SyntheticData`` with ``src`` LongTensor ``[num_sentences, max_length]`` and ``tgt``
    LongTensor ``[num_sentences, max_length + 2]`` (BOS + target + EOS, padded with PAD).

    Raises ``TypeError`` for a non-int size or seed or a non-str task, and ``ValueError`` for
    ``num_sentences < 0``, ``vocab_size < NUM_SPECIAL_TOKENS + 2``, ``max_length < 1``,
    ``min_length`` outside ``[1, max_length]``, a negative seed or an unknown task.
    """
    num_sentences = check_int("num_sentences", num_sentences)
    vocab_size = check_int("vocab_size", vocab_size)
    max_length = check_int("max_length", max_length)
    min_length = check_int("min_length", min_length)
    seed = check_int("seed", seed)
    task = _check_task(task)
    if num_sentences < 0:
        raise ValueError(f"num_sentences must be >= 0, got {num_sentences}")
    smallest_vocab = NUM_SPECIAL_TOKENS + MIN_CONTENT_TOKENS
    if vocab_size < smallest_vocab:
        raise ValueError(
            f"vocab_size must be at least {smallest_vocab} ({NUM_SPECIAL_TOKENS} special tokens "
            f"PAD, BOS, EOS plus at least {MIN_CONTENT_TOKENS} content tokens), got {vocab_size}"
        )
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if not 1 <= min_length <= max_length:
        raise ValueError(f"min_length must be in [1, max_length={max_length}], got {min_length}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")

    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_length, max_length + 1, (num_sentences,), generator=generator)
    tokens = torch.randint(NUM_SPECIAL_TOKENS, vocab_size, (num_sentences, max_length), generator=generator)
    inside = _positions_in_sentence(lengths, max_length)
    src = torch.where(inside, tokens, torch.full_like(tokens, PAD_ID))
    content = _target_content(task, src, lengths, generator, vocab_size)
    tgt = _assemble_target(content, lengths)
    ids = torch.arange(num_sentences, dtype=torch.long)
    return SyntheticData(src, tgt, lengths, ids, task, vocab_size, max_length)


@dataclasses.dataclass
class DatasetSummary:
    """What ``validate_dataset`` found, as plain data.

    Lengths are of the source sentences (targets have the same lengths, plus BOS and EOS). For an
    empty dataset ``min_length``, ``max_length`` and ``mean_length``/``std_length`` are None.

    Fields:
        task, vocab_size: as the dataset says.
        padded_length: the dataset's ``max_length``, the width of ``src``.
        num_sentences: number of sentences.
        min_length, max_length, mean_length, std_length: of the sentence lengths (std with
            ddof=0, the population standard deviation).
        length_histogram: ``{length: count}`` for every length ``1 .. padded_length``, zeros
            included, in increasing order.
        tokens_total: number of content tokens over all source sentences (the sum of lengths).
        num_content_tokens: size of the content vocabulary, ``vocab_size - NUM_SPECIAL_TOKENS``.
        vocab_coverage: fraction of the content vocabulary occurring at least once in the sources.
        missing_values: positions inside a source or target sentence that hold PAD (0 once
            validation passed: the token sequences' notion of a missing value).
        duplicate_ids: sentences whose id another sentence already has (0 once validation passed).
    """

    task: str
    vocab_size: int
    padded_length: int
    num_sentences: int
    min_length: Optional[int]
    max_length: Optional[int]
    mean_length: Optional[float]
    std_length: Optional[float]
    length_histogram: Dict[int, int]
    tokens_total: int
    num_content_tokens: int
    vocab_coverage: float
    missing_values: int
    duplicate_ids: int

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a plain dict (the histogram copied)."""
        return dataclasses.asdict(self)

    def to_dataframe(self) -> Any:
        """A one-row ``pandas.DataFrame`` whose columns are the fields (the histogram stays a dict).

        One row per dataset, so summaries of several datasets concatenate into one table
        (``pandas.concat([a.to_dataframe(), b.to_dataframe()])``). pandas is optional: it is
        imported here, and an ``ImportError`` says how to install it when it is missing.
        """
        try:
            import pandas
        except ImportError as exc:
            raise ImportError(
                "DatasetSummary.to_dataframe needs pandas, which is not installed: pip install pandas"
            ) from exc
        return pandas.DataFrame([self.to_dict()])


def _first_row(bad: torch.Tensor) -> int:
    """Index of the first True row of a bool ``[num]`` or ``[num, width]`` tensor."""
    if bad.dim() > 1:
        bad = bad.any(dim=1)
    return int(bad.nonzero()[0, 0])


def _check_structure(data: SyntheticData) -> None:
    """Types and shapes of the dataset's tensors, raising TypeError/ValueError naming the field."""
    for name in ("src", "tgt", "lengths", "ids"):
        value = getattr(data, name)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"data.{name} must be a torch.Tensor, got {type(value).__name__}")
        # int64 only: a float tensor could hold NaN, and token ids compared as floats lose exactness.
        if value.dtype != torch.long:
            raise TypeError(f"data.{name} must be a LongTensor (torch.int64), got dtype {value.dtype}")
    vocab_size = check_int("data.vocab_size", data.vocab_size)
    max_length = check_int("data.max_length", data.max_length)
    _check_task(data.task)
    if vocab_size < NUM_SPECIAL_TOKENS + MIN_CONTENT_TOKENS:
        raise ValueError(
            f"data.vocab_size must be at least {NUM_SPECIAL_TOKENS + MIN_CONTENT_TOKENS}, got {vocab_size}"
        )
    if max_length < 1:
        raise ValueError(f"data.max_length must be >= 1, got {max_length}")
    if data.src.dim() != 2:
        raise ValueError(f"data.src must be 2-D [num, max_length], got shape {list(data.src.shape)}")
    num = data.src.shape[0]
    expected = {"src": (num, max_length), "tgt": (num, max_length + 2), "lengths": (num,), "ids": (num,)}
    for name, shape in expected.items():
        got = tuple(getattr(data, name).shape)
        if got != shape:
            described = {
                "src": "[num, max_length]",
                "tgt": "[num, max_length + 2]",
                "lengths": "[num]",
                "ids": "[num]",
            }[name]
            raise ValueError(f"data.{name} must have shape {described} = {list(shape)}, got {list(got)}")


def validate_dataset(data: SyntheticData, *, check_task: bool = True) -> DatasetSummary:
    """Check that ``data`` is a well-formed synthetic dataset and summarise it.

    Checks, each raising ``ValueError`` that names the problem and the first offending sentence
    (``TypeError`` for wrong types):

    - ``src``, ``tgt``, ``lengths``, ``ids`` are LongTensors of shapes ``[num, max_length]``,
      ``[num, max_length + 2]``, ``[num]``, ``[num]`` (integers, so no NaN);
    - ids are unique (the sentence id is the primary key);
    - every token is in ``[0, vocab_size)``;
    - lengths are in ``[1, max_length]``;
    - no PAD inside a sentence (a missing value), in the source or the target;
    - each source holds content tokens (no BOS or EOS) inside its length and PAD after it;
    - each target is BOS, ``length`` content tokens, EOS, then PAD;
    - with ``check_task`` (default), the target is what the task makes of the source for
      ``copy``, ``reverse`` and ``sort`` (``random`` has no relation to check).

    Returns a ``DatasetSummary``.
    """
    if not isinstance(data, SyntheticData):
        raise TypeError(f"data must be a SyntheticData (from generate_synthetic_data), got {type(data).__name__}")
    if not isinstance(check_task, bool):
        raise TypeError(f"check_task must be a bool, got {type(check_task).__name__}")
    _check_structure(data)
    src, tgt, lengths, ids = data.src.cpu(), data.tgt.cpu(), data.lengths.cpu(), data.ids.cpu()
    vocab_size, max_length, num = int(data.vocab_size), int(data.max_length), int(src.shape[0])

    unique_ids = torch.unique(ids)
    duplicate_ids = num - int(unique_ids.numel())
    if duplicate_ids:
        values, counts = torch.unique(ids, return_counts=True)
        repeated = values[counts > 1][:5].tolist()
        raise ValueError(f"data.ids must be unique: {duplicate_ids} duplicate id(s), e.g. {repeated}")

    for name, tokens in (("src", src), ("tgt", tgt)):
        outside = (tokens < 0) | (tokens >= vocab_size)
        if outside.any():
            row = _first_row(outside)
            col = int(outside[row].nonzero()[0, 0])
            raise ValueError(
                f"data.{name} has token {int(tokens[row, col])} outside [0, vocab_size={vocab_size}) "
                f"in sentence id {int(ids[row])} (row {row}), position {col}"
            )

    bad_length = (lengths < 1) | (lengths > max_length)
    if bad_length.any():
        row = _first_row(bad_length)
        raise ValueError(
            f"data.lengths must be in [1, max_length={max_length}], got {int(lengths[row])} for "
            f"sentence id {int(ids[row])} (row {row})"
        )

    inside = _positions_in_sentence(lengths, max_length)
    target_content = tgt[:, 1 : max_length + 1]
    # A missing value in a token sequence is a PAD where the length says a token should be.
    missing_in_src = inside & (src == PAD_ID)
    missing_in_tgt = inside & (target_content == PAD_ID)
    missing_values = int(missing_in_src.sum()) + int(missing_in_tgt.sum())
    for name, missing, tokens in (("src", missing_in_src, src), ("tgt", missing_in_tgt, tgt)):
        if missing.any():
            row = _first_row(missing)
            raise ValueError(
                f"data.{name} has PAD inside a sentence ({missing_values} missing value(s) in all), "
                f"first in sentence id {int(ids[row])} (row {row}) of length {int(lengths[row])}: "
                f"{tokens[row].tolist()}"
            )
    for name, content in (("src", src), ("tgt", target_content)):
        special_inside = inside & (content < NUM_SPECIAL_TOKENS)
        if special_inside.any():
            row = _first_row(special_inside)
            raise ValueError(
                f"data.{name} has a special token (BOS/EOS) inside sentence id {int(ids[row])} "
                f"(row {row}): {getattr(data, name)[row].tolist()}"
            )
    content_after_end = ~inside & (src != PAD_ID)
    if content_after_end.any():
        row = _first_row(content_after_end)
        raise ValueError(
            f"data.src has non-PAD tokens after the end given by data.lengths "
            f"({int(lengths[row])}) in sentence id {int(ids[row])} (row {row}): {src[row].tolist()}"
        )
    # Rebuilding the expected frame from the target's own content checks BOS, EOS and the
    # padding after EOS in one comparison; the content itself is checked by the task below.
    expected_frame = _assemble_target(torch.where(inside, target_content, torch.full_like(src, PAD_ID)), lengths)
    wrong_frame = tgt != expected_frame
    if wrong_frame.any():
        row = _first_row(wrong_frame)
        raise ValueError(
            f"data.tgt of sentence id {int(ids[row])} (row {row}) must be BOS, {int(lengths[row])} "
            f"content tokens (its length), EOS, then PAD; got {tgt[row].tolist()}"
        )

    if check_task and data.task != "random":
        expected_content = _target_content(data.task, src, lengths, None, vocab_size)
        wrong = inside & (target_content != expected_content)
        if wrong.any():
            row = _first_row(wrong)
            raise ValueError(
                f"data.tgt is not the {data.task!r} of data.src for sentence id {int(ids[row])} "
                f"(row {row}): source {src[row, : int(lengths[row])].tolist()}, target "
                f"{target_content[row, : int(lengths[row])].tolist()}, expected "
                f"{expected_content[row, : int(lengths[row])].tolist()}"
            )

    histogram_counts = torch.bincount(lengths, minlength=max_length + 1)
    length_histogram = {length: int(histogram_counts[length]) for length in range(1, max_length + 1)}
    num_content_tokens = vocab_size - NUM_SPECIAL_TOKENS
    occurring = torch.unique(src[inside])
    lengths_float = lengths.to(torch.float64)
    return DatasetSummary(
        task=data.task,
        vocab_size=vocab_size,
        padded_length=max_length,
        num_sentences=num,
        min_length=int(lengths.min()) if num else None,
        max_length=int(lengths.max()) if num else None,
        mean_length=float(lengths_float.mean()) if num else None,
        std_length=float(lengths_float.std(correction=0)) if num else None,
        length_histogram=length_histogram,
        tokens_total=int(lengths.sum()),
        num_content_tokens=num_content_tokens,
        vocab_coverage=int(occurring.numel()) / num_content_tokens,
        missing_values=missing_values,
        duplicate_ids=duplicate_ids,
    )
