"""attnlens.tiny.training: the history train_model records, its progress bar, any model, and that
training on the synthetic tasks learns the alignment the task implies.

Everything trains on the reference backend (plain PyTorch): the Triton interpreter is far too
slow to train.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnlens
from attnlens import tiny
from attnlens.tiny.data import PAD_ID
from attnlens.tiny.training import default_step

D_MODEL, NHEAD, DIM_FF = 16, 2, 32


def _small_model(**kwargs):
    options = dict(d_model=D_MODEL, nhead=NHEAD, num_layers=2, dim_feedforward=DIM_FF, max_len=16)
    options.update(kwargs)
    return tiny.build_transformer_model(12, **options).eval()


def test_train_model_history_matches_the_batches(reference_backend, one_thread, capsys):
    data = tiny.generate_synthetic_data(40, vocab_size=10, max_length=6, task="reverse", seed=2)
    train_loader, val_loader = tiny.make_dataloaders(data, batch_size=16, val_fraction=0.2, seed=0)
    assert len(train_loader.dataset) == 32 and len(val_loader.dataset) == 8
    model = _small_model(num_layers=1, dropout=0.0).train()
    # lr = 0: the model does not change, so every recorded number can be recomputed
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = list(train_loader)
    history = tiny.train_model(model, batches, optimizer, num_epochs=2, val_loader=val_loader, progress=False)
    assert capsys.readouterr().err == ""
    assert model.training
    assert history.num_steps == 4 and history.step == [0, 1, 2, 3] and history.epoch == [0, 0, 1, 1]
    assert history.val_step == [2, 4] and history.val_epoch == [0, 1]
    assert history.wall_time_s > 0
    for i, (src, tgt) in enumerate(batches * 2):
        with torch.no_grad():
            logits = model(src, tgt[:, :-1])
        labels = tgt[:, 1:]
        real = labels != PAD_ID
        loss = F.cross_entropy(logits[real], labels[real])
        accuracy = (logits.argmax(-1)[real] == labels[real]).double().mean()
        assert history.loss[i] == pytest.approx(float(loss), rel=1e-5)
        assert history.accuracy[i] == pytest.approx(float(accuracy), rel=1e-6)
    val_loss, val_accuracy = tiny.evaluate_model(model, val_loader)
    assert history.val_loss == pytest.approx([val_loss] * 2, rel=1e-5)
    assert history.val_accuracy == pytest.approx([val_accuracy] * 2)
    assert list(history.keys()) == [
        "step",
        "epoch",
        "loss",
        "accuracy",
        "lr",
        "val_step",
        "val_epoch",
        "val_loss",
        "val_accuracy",
    ]
    assert history.to_dict()["loss"] == history.loss

    from attnlens.viz import training_curves

    fig = training_curves(history)
    assert len(fig.axes) == 2
    train_line = [line for line in fig.axes[1].lines if line.get_label() == "train"][0]
    assert list(train_line.get_ydata()) == pytest.approx(history.accuracy)


def test_train_model_progress_bar_and_max_steps(reference_backend, one_thread, capsys):
    pytest.importorskip("tqdm")
    data = tiny.generate_synthetic_data(48, vocab_size=10, max_length=5, task="copy", seed=0)
    train_loader, _ = tiny.make_dataloaders(data, batch_size=8, val_fraction=0.0)
    model = _small_model(num_layers=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = tiny.train_model(model, train_loader, optimizer, num_epochs=3, max_steps=7)
    err = capsys.readouterr().err
    assert "training" in err and "loss=" in err and "7/7" in err
    assert history.num_steps == 7 and history.val_accuracy == [] and "val_accuracy" not in history


def test_train_model_with_plain_inputs_and_labels(reference_backend, one_thread):
    # any model: batches (inputs, labels), padding labels ignored
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(6, 8), nn.Linear(8, 6))
    inputs = torch.randint(1, 6, (32, 4))
    labels = inputs.clone()
    labels[:, 3] = PAD_ID
    loader = [(inputs[i : i + 8], labels[i : i + 8]) for i in range(0, 32, 8)]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    history = tiny.train_model(model, loader, optimizer, num_epochs=15, val_loader=loader, progress=False)
    assert history.val_accuracy[-1] == 1.0 and history.val_loss[-1] < history.val_loss[0]
    logits, _ = default_step(model, loader[0])
    assert logits.shape == (8, 4, 6)


# ----------------------------------------------------------------------------------------------
# learned structure


# A config smaller than train_on_task's default, so both runs fit the test budget. Measured with
# seeds 0-5 (reference backend, torch 2.13 CPU) after 300 steps:
#   reverse: held-out token accuracy 0.9905-0.9975, best head's mean weight on the mirrored
#            source position 0.577-0.699 (always a head of the second decoder layer)
#   copy:    held-out token accuracy 0.9976-1.0, best head's mean weight on the same position 0.725-0.823
# The thresholds below sit under the worst seed.
STRUCTURE_CONFIG = dict(
    num_sentences=3000,
    vocab_size=14,
    max_length=8,
    batch_size=64,
    lr=3e-3,
    warmup_steps=50,
    d_model=32,
    nhead=2,
    num_layers=2,
    dim_feedforward=64,
    dropout=0.0,
)
STRUCTURE_STEPS = 300


def aligned_weight(model, held_out, task):
    """For each (decoder layer, head): the mean cross-attention weight that a target query puts on
    the source position the task maps it to (mirrored for reverse, the same for copy)."""
    src, tgt = held_out.src[:256], held_out.tgt[:256]
    lengths = held_out.lengths[:256]
    with torch.no_grad(), attnlens.capture_attention(model) as captured:
        model(src, tgt[:, :-1])
    cross = captured.stack("cross")  # [L, B, H, Nt, Ns]
    positions = torch.arange(held_out.max_length)
    inside = positions[None, :] < lengths[:, None]  # [B, M]
    source = (lengths[:, None] - 1 - positions[None, :]) if task == "reverse" else positions[None, :].expand_as(inside)
    source = source.clamp(min=0)
    # query p (reading BOS, t1 ...) predicts target token p + 1, which sits at `source[p]`
    picked = (
        cross[:, :, :, : held_out.max_length, :]
        .gather(-1, source[None, :, None, :, None].expand(cross.shape[0], -1, cross.shape[2], -1, 1))
        .squeeze(-1)
    )
    weights = inside[None, :, None, :].to(picked.dtype)
    return (picked * weights).sum(dim=(1, 3)) / weights.sum(dim=(1, 3))  # [L, H]


@pytest.mark.parametrize("task, min_accuracy, min_alignment", [("reverse", 0.95, 0.5), ("copy", 0.95, 0.6)])
def test_training_learns_the_alignment(reference_backend, one_thread, task, min_accuracy, min_alignment):
    model, history, data = tiny.train_on_task(task, steps=STRUCTURE_STEPS, seed=0, progress=False, **STRUCTURE_CONFIG)
    assert not model.training
    assert history.num_steps == STRUCTURE_STEPS
    assert history.final_val_accuracy >= min_accuracy
    alignment = aligned_weight(model, data.held_out, task)
    assert alignment.max() >= min_alignment, alignment
