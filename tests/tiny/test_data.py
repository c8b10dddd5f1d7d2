"""attnlens.tiny.data: synthetic tasks, layout, reproducibility, validation and its summary, errors."""

import collections
import statistics
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from attnlens.tiny.data import (
    BOS_ID,
    EOS_ID,
    NUM_SPECIAL_TOKENS,
    PAD_ID,
    TASKS,
    DatasetSummary,
    SyntheticData,
    generate_synthetic_data,
    validate_dataset,
)


def make(task="copy", num=200, vocab=12, max_length=9, **kwargs):
    return generate_synthetic_data(num, vocab, max_length, task, **kwargs)


def clone(data: SyntheticData) -> SyntheticData:
    """A deep copy that a test may corrupt."""
    return SyntheticData(
        data.src.clone(),
        data.tgt.clone(),
        data.lengths.clone(),
        data.ids.clone(),
        data.task,
        data.vocab_size,
        data.max_length,
    )


def expected_target(task, source):
    return {"copy": list(source), "reverse": list(reversed(source)), "sort": sorted(source)}[task]


def test_special_token_constants():
    assert (PAD_ID, BOS_ID, EOS_ID, NUM_SPECIAL_TOKENS) == (0, 1, 2, 3)
    assert TASKS == ("copy", "reverse", "sort", "random")


# --- layout ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_shapes_dtypes_and_attributes(task):
    data = make(task, num=50, vocab=10, max_length=7)
    assert isinstance(data, torch.utils.data.Dataset)
    assert data.src.shape == (50, 7) and data.src.dtype == torch.long
    assert data.tgt.shape == (50, 9) and data.tgt.dtype == torch.long
    assert data.lengths.shape == (50,) and data.lengths.dtype == torch.long
    assert data.ids.tolist() == list(range(50))
    assert (data.task, data.vocab_size, data.max_length) == (task, 10, 7)
    assert len(data) == 50


@pytest.mark.parametrize("task", TASKS)
def test_every_sentence_is_content_then_padding(task):
    data = make(task, num=300, vocab=9, max_length=8)
    for src, tgt, length in zip(data.src.tolist(), data.tgt.tolist(), data.lengths.tolist()):
        assert 1 <= length <= 8
        assert all(NUM_SPECIAL_TOKENS <= t < 9 for t in src[:length])
        assert src[length:] == [PAD_ID] * (8 - length)
        assert tgt[0] == BOS_ID
        assert all(NUM_SPECIAL_TOKENS <= t < 9 for t in tgt[1 : length + 1])
        assert tgt[length + 1] == EOS_ID
        assert tgt[length + 2 :] == [PAD_ID] * (8 - length)
    assert data.sentences == [row[:n] for row, n in zip(data.src.tolist(), data.lengths.tolist())]


@pytest.mark.parametrize("task", ["copy", "reverse", "sort"])
def test_target_is_the_task_of_the_source_for_every_sentence(task):
    data = make(task, num=500, vocab=8, max_length=10)  # small vocab: sort sees many duplicates
    for source, target_row, length in zip(data.sentences, data.tgt.tolist(), data.lengths.tolist()):
        target = target_row[1 : length + 1]
        assert target == expected_target(task, source)
    assert data.targets == [expected_target(task, s) for s in data.sentences]


def test_tasks_by_hand_on_one_seed():
    # The source depends only on the seed and sizes, not on the task, so the targets line up.
    copy, reverse, sort = (make(t, num=30, vocab=20, max_length=6, seed=4) for t in ("copy", "reverse", "sort"))
    assert torch.equal(copy.src, reverse.src) and torch.equal(copy.src, sort.src)
    long_row = int(torch.argmax(copy.lengths))
    source = copy.sentences[long_row]
    assert len(source) >= 3
    assert reverse.targets[long_row][0] == source[-1] and reverse.targets[long_row][-1] == source[0]
    assert sort.targets[long_row][0] == min(source) and sort.targets[long_row][-1] == max(source)
    assert copy.targets[long_row] == source


def test_random_task_has_same_lengths_but_no_relation():
    data = make("random", num=400, vocab=30, max_length=8)
    assert [len(t) for t in data.targets] == data.lengths.tolist()
    # With 27 content tokens a target equal to its source by chance is rare; a copy would be 400.
    equal = sum(t == s for t, s in zip(data.targets, data.sentences))
    matching_tokens = sum(a == b for t, s in zip(data.targets, data.sentences) for a, b in zip(t, s))
    assert equal < 40
    assert matching_tokens / int(data.lengths.sum()) < 0.1  # about 1/27 by chance


def test_lengths_cover_min_to_max_and_tokens_cover_content():
    data = generate_synthetic_data(2000, 15, 11, "copy", min_length=4, seed=7)
    assert set(data.lengths.tolist()) == set(range(4, 12))
    counts = collections.Counter(data.lengths.tolist())
    assert min(counts.values()) > 2000 / 8 * 0.7  # roughly uniform: 250 expected per length
    content = data.src[data.src != PAD_ID]
    assert set(content.tolist()) == set(range(NUM_SPECIAL_TOKENS, 15))


def test_fixed_length_when_min_equals_max():
    data = generate_synthetic_data(20, 6, 5, "reverse", min_length=5)
    assert data.lengths.tolist() == [5] * 20
    assert bool((data.src != PAD_ID).all())
    assert data.tgt[:, 6].tolist() == [EOS_ID] * 20


def test_smallest_valid_arguments():
    data = generate_synthetic_data(4, NUM_SPECIAL_TOKENS + 2, 1, "sort")
    assert data.src.shape == (4, 1) and data.lengths.tolist() == [1, 1, 1, 1]
    assert set(data.src.flatten().tolist()) <= {3, 4}
    assert data.tgt[:, 2].tolist() == [EOS_ID] * 4


def test_empty_dataset():
    data = generate_synthetic_data(0, 10, 4)
    assert data.src.shape == (0, 4) and data.tgt.shape == (0, 6) and len(data) == 0
    summary = validate_dataset(data)
    assert summary.num_sentences == 0 and summary.tokens_total == 0 and summary.vocab_coverage == 0.0
    assert summary.min_length is None and summary.max_length is None and summary.mean_length is None
    assert summary.length_histogram == {1: 0, 2: 0, 3: 0, 4: 0}


# --- reproducibility ------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_data_different_seed_different_data(task):
    a, b = make(task, seed=3), make(task, seed=3)
    for name in ("src", "tgt", "lengths", "ids"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    c = make(task, seed=4)
    assert not torch.equal(a.src, c.src)
    assert not torch.equal(a.lengths, c.lengths)
    if task == "random":  # its target is a second, independent draw
        assert not torch.equal(a.tgt, c.tgt)


def test_global_random_state_neither_used_nor_changed():
    torch.manual_seed(1)
    state = torch.random.get_rng_state()
    a = make("random", seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(12345)
    b = make("random", seed=5)
    assert torch.equal(a.src, b.src) and torch.equal(a.tgt, b.tgt)


# --- Dataset protocol, DataLoader, split -----------------------------------------------------------


def test_getitem_and_dataloader_batches():
    data = make("reverse", num=10, vocab=11, max_length=6)
    src, tgt = data[3]
    assert torch.equal(src, data.src[3]) and torch.equal(tgt, data.tgt[3])
    batches = list(DataLoader(data, batch_size=4, shuffle=False))
    assert [b[0].shape for b in batches] == [(4, 6), (4, 6), (2, 6)]
    assert [b[1].shape for b in batches] == [(4, 8), (4, 8), (2, 8)]
    assert torch.equal(torch.cat([b[0] for b in batches]), data.src)
    assert torch.equal(torch.cat([b[1] for b in batches]), data.tgt)
    # Teacher forcing: the decoder reads tgt[:, :-1] and predicts tgt[:, 1:].
    decoder_input, labels = batches[0][1][:, :-1], batches[0][1][:, 1:]
    assert bool((decoder_input[:, 0] == BOS_ID).all())
    assert torch.equal(labels[:, :-1], decoder_input[:, 1:])


def test_split_is_a_reproducible_partition_keeping_ids():
    data = make("sort", num=101)
    train, held_out = data.split(0.2, seed=1)
    assert (len(train), len(held_out)) == (81, 20)
    assert sorted(train.ids.tolist() + held_out.ids.tolist()) == list(range(101))
    for part in (train, held_out):
        assert isinstance(part, SyntheticData) and part.task == "sort"
        for row, sentence_id in enumerate(part.ids.tolist()):
            assert torch.equal(part.src[row], data.src[sentence_id])
            assert torch.equal(part.tgt[row], data.tgt[sentence_id])
            assert part.lengths[row] == data.lengths[sentence_id]
        validate_dataset(part)
    again_train, _ = data.split(0.2, seed=1)
    assert torch.equal(again_train.ids, train.ids)
    other_train, _ = data.split(0.2, seed=2)
    assert not torch.equal(other_train.ids, train.ids)
    assert len(data.split(0.0)[1]) == 0 and len(data.split(1.0)[0]) == 0


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda d: d.split(1.5), ValueError, r"fraction must be in \[0, 1\]"),
        (lambda d: d.split(-0.1), ValueError, "fraction must be in"),
        (lambda d: d.split("0.2"), TypeError, "fraction must be a float"),
        (lambda d: d.split(0.2, seed=1.0), TypeError, "seed must be an int"),
        (lambda d: d.split(0.2, seed=-1), ValueError, "seed must be >= 0"),
    ],
)
def test_split_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(make(num=10))


# --- validate_dataset: summary ------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_summary_matches_direct_computation(task):
    data = generate_synthetic_data(300, 40, 12, task, min_length=2, seed=11)
    summary = validate_dataset(data)
    lengths = [len(s) for s in data.sentences]
    assert isinstance(summary, DatasetSummary)
    assert summary.task == task and summary.vocab_size == 40 and summary.padded_length == 12
    assert summary.num_sentences == 300
    assert summary.min_length == min(lengths) and summary.max_length == max(lengths)
    assert summary.mean_length == pytest.approx(statistics.mean(lengths), abs=1e-12)
    assert summary.std_length == pytest.approx(statistics.pstdev(lengths), abs=1e-12)
    counts = collections.Counter(lengths)
    assert summary.length_histogram == {n: counts.get(n, 0) for n in range(1, 13)}
    assert summary.length_histogram[1] == 0  # min_length=2
    assert summary.tokens_total == sum(lengths)
    assert summary.num_content_tokens == 37
    occurring = {t for s in data.sentences for t in s}
    assert summary.vocab_coverage == pytest.approx(len(occurring) / 37)
    assert (summary.missing_values, summary.duplicate_ids) == (0, 0)


def test_summary_of_a_hand_built_dataset():
    # vocab 7 -> content tokens 3, 4, 5, 6; the sentences use 3, 4 and 6.
    src = torch.tensor([[3, 4, 0], [6, 0, 0], [3, 3, 3]])
    tgt = torch.tensor([[1, 4, 3, 2, 0], [1, 6, 2, 0, 0], [1, 3, 3, 3, 2]])
    data = SyntheticData(src, tgt, torch.tensor([2, 1, 3]), torch.tensor([10, 20, 30]), "reverse", 7, 3)
    summary = validate_dataset(data)
    assert summary.to_dict() == {
        "task": "reverse",
        "vocab_size": 7,
        "padded_length": 3,
        "num_sentences": 3,
        "min_length": 1,
        "max_length": 3,
        "mean_length": 2.0,
        "std_length": pytest.approx((2 / 3) ** 0.5),
        "length_histogram": {1: 1, 2: 1, 3: 1},
        "tokens_total": 6,
        "num_content_tokens": 4,
        "vocab_coverage": 0.75,
        "missing_values": 0,
        "duplicate_ids": 0,
    }


def test_to_dataframe_is_one_row_of_the_fields():
    pandas = pytest.importorskip("pandas")
    first, second = validate_dataset(make("copy", seed=1)), validate_dataset(make("sort", seed=2))
    frame = first.to_dataframe()
    assert list(frame.columns) == list(first.to_dict())
    assert len(frame) == 1
    assert frame.loc[0, "num_sentences"] == 200 and frame.loc[0, "task"] == "copy"
    assert frame.loc[0, "mean_length"] == pytest.approx(first.mean_length)
    both = pandas.concat([first.to_dataframe(), second.to_dataframe()], ignore_index=True)
    assert both["task"].tolist() == ["copy", "sort"]


def test_to_dataframe_without_pandas_says_how_to_install(monkeypatch):
    summary = validate_dataset(make(num=5))
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` raise ImportError
    with pytest.raises(ImportError, match="pip install pandas"):
        summary.to_dataframe()
    assert summary.to_dict()["num_sentences"] == 5  # plain data still works


# --- validate_dataset: failures -------------------------------------------------------------------


def corrupt_duplicate_id(d):
    d.ids[4] = d.ids[1]


def corrupt_token_above_vocab(d):
    d.src[2, 0] = d.vocab_size


def corrupt_negative_token(d):
    d.tgt[3, 1] = -1


def corrupt_pad_inside_source(d):
    row = int(torch.argmax(d.lengths))
    d.src[row, 1] = PAD_ID


def corrupt_bos_inside_source(d):
    d.src[0, 0] = BOS_ID


def corrupt_content_after_end(d):
    row = int(torch.argmin(d.lengths))
    d.src[row, d.max_length - 1] = NUM_SPECIAL_TOKENS


def corrupt_length_too_long(d):
    d.lengths[0] = d.max_length + 1


def corrupt_length_zero(d):
    d.lengths[0] = 0


def corrupt_length_mismatch(d):
    row = int(torch.argmin(d.lengths))
    d.lengths[row] += 1


def corrupt_missing_bos(d):
    d.tgt[5, 0] = NUM_SPECIAL_TOKENS


def corrupt_missing_eos(d):
    d.tgt[5, int(d.lengths[5]) + 1] = PAD_ID


def corrupt_pad_inside_target(d):
    d.tgt[5, 1] = PAD_ID


def corrupt_eos_inside_target(d):
    row = int(torch.argmax(d.lengths))
    d.tgt[row, 1] = EOS_ID


def corrupt_target_content(d):
    row = int(torch.argmax(d.lengths))
    d.tgt[row, 1] = NUM_SPECIAL_TOKENS if d.tgt[row, 1] != NUM_SPECIAL_TOKENS else NUM_SPECIAL_TOKENS + 1


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (corrupt_duplicate_id, "ids must be unique"),
        (corrupt_token_above_vocab, r"data.src has token 12 outside \[0, vocab_size=12\) in sentence id 2"),
        (corrupt_negative_token, r"data.tgt has token -1 outside \[0, vocab_size=12\) in sentence id 3"),
        (corrupt_pad_inside_source, "data.src has PAD inside a sentence"),
        (corrupt_bos_inside_source, "data.src has a special token"),
        (corrupt_content_after_end, "non-PAD tokens after the end"),
        (corrupt_length_too_long, r"data.lengths must be in \[1, max_length=9\], got 10 for sentence id 0"),
        (corrupt_length_zero, r"data.lengths must be in \[1, max_length=9\], got 0"),
        (corrupt_length_mismatch, "data.src has PAD inside a sentence"),
        (corrupt_missing_bos, "data.tgt of sentence id 5 .* must be BOS"),
        (corrupt_missing_eos, "data.tgt of sentence id 5 .* must be BOS"),
        (corrupt_pad_inside_target, "data.tgt has PAD inside a sentence .* sentence id 5"),
        (corrupt_eos_inside_target, "data.tgt has a special token"),
    ],
)
@pytest.mark.parametrize("task", TASKS)
def test_validate_rejects_corrupted_data(task, corrupt, message):
    data = clone(make(task))
    corrupt(data)
    with pytest.raises(ValueError, match=message):
        validate_dataset(data)


@pytest.mark.parametrize("task", ["copy", "reverse", "sort"])
def test_validate_rejects_target_inconsistent_with_task(task):
    data = clone(make(task))
    corrupt_target_content(data)
    with pytest.raises(ValueError, match=f"data.tgt is not the '{task}' of data.src"):
        validate_dataset(data)
    summary = validate_dataset(data, check_task=False)  # the structure is still fine
    assert summary.num_sentences == 200


def test_validate_accepts_any_content_for_random():
    data = clone(make("random"))
    corrupt_target_content(data)
    assert validate_dataset(data).task == "random"


def test_validate_rejects_wrong_task_label():
    data = clone(make("copy", min_length=3))
    data.task = "reverse"  # a copy is not a reverse once a sentence has two different tokens
    with pytest.raises(ValueError, match="is not the 'reverse'"):
        validate_dataset(data)


@pytest.mark.parametrize(
    "corrupt, error, message",
    [
        (
            lambda d: setattr(d, "src", d.src.float()),
            TypeError,
            r"data.src must be a LongTensor .* got dtype torch.float32",
        ),
        (lambda d: setattr(d, "ids", d.ids.tolist()), TypeError, "data.ids must be a torch.Tensor"),
        (lambda d: setattr(d, "tgt", d.tgt[:, :-1]), ValueError, r"data.tgt must have shape \[num, max_length \+ 2\]"),
        (lambda d: setattr(d, "lengths", d.lengths[:-1]), ValueError, r"data.lengths must have shape \[num\]"),
        (lambda d: setattr(d, "src", d.src[0]), ValueError, "data.src must be 2-D"),
        (lambda d: setattr(d, "max_length", 8), ValueError, r"data.src must have shape \[num, max_length\]"),
        (lambda d: setattr(d, "task", "shuffle"), ValueError, "task must be one of copy, reverse, sort, random"),
        (lambda d: setattr(d, "vocab_size", 4), ValueError, "data.vocab_size must be at least 5"),
    ],
)
def test_validate_structure_errors(corrupt, error, message):
    data = clone(make())
    corrupt(data)
    with pytest.raises(error, match=message):
        validate_dataset(data)


def test_validate_argument_errors():
    with pytest.raises(TypeError, match="data must be a SyntheticData"):
        validate_dataset((torch.zeros(2, 3), torch.zeros(2, 5)))
    with pytest.raises(TypeError, match="check_task must be a bool"):
        validate_dataset(make(num=3), check_task=1)


# --- generate_synthetic_data: argument errors ------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            dict(vocab_size=4),
            ValueError,
            r"vocab_size must be at least 5 \(3 special tokens PAD, BOS, EOS plus at "
            r"least 2 content tokens\), got 4",
        ),
        (dict(vocab_size=0), ValueError, "vocab_size must be at least 5"),
        (dict(max_length=0), ValueError, "max_length must be >= 1, got 0"),
        (dict(max_length=-3), ValueError, "max_length must be >= 1"),
        (dict(min_length=0), ValueError, r"min_length must be in \[1, max_length=6\], got 0"),
        (dict(min_length=7), ValueError, r"min_length must be in \[1, max_length=6\], got 7"),
        (dict(num_sentences=-1), ValueError, "num_sentences must be >= 0, got -1"),
        (dict(seed=-1), ValueError, "seed must be >= 0"),
        (dict(task="shuffle"), ValueError, r"task must be one of copy, reverse, sort, random; got 'shuffle'"),
        (dict(task=None), TypeError, "task must be a str"),
        (dict(num_sentences=10.0), TypeError, "num_sentences must be an int, got float"),
        (dict(vocab_size="12"), TypeError, "vocab_size must be an int, got str"),
        (dict(max_length=6.5), TypeError, "max_length must be an int"),
        (dict(min_length=True), TypeError, "min_length must be an int, got bool"),
        (dict(seed=0.5), TypeError, "seed must be an int"),
    ],
)
def test_generate_argument_errors(kwargs, error, message):
    arguments = dict(num_sentences=10, vocab_size=12, max_length=6, task="copy")
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        generate_synthetic_data(**arguments)


def test_numpy_integers_are_accepted():
    np = pytest.importorskip("numpy")
    data = generate_synthetic_data(np.int64(5), np.int32(10), np.int64(4), seed=np.int64(2))
    assert torch.equal(data.src, generate_synthetic_data(5, 10, 4, seed=2).src)
