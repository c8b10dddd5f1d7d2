"""Train a sequence model on token batches: ``attnlens.tiny.train_model`` and its helpers.

    data = attnlens.tiny.generate_synthetic_data(6000, vocab_size=16, max_length=10, task="reverse", seed=0)
    train_loader, val_loader = attnlens.tiny.make_dataloaders(data, batch_size=64, val_fraction=0.1)
    model = attnlens.tiny.build_transformer_model(data.vocab_size, max_len=data.max_length + 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = attnlens.tiny.train_model(model, train_loader, optimizer, num_epochs=5, val_loader=val_loader)
    attnlens.viz.training_curves(history)

Or in one call: ``model, history, data = attnlens.tiny.train_on_task("reverse")``.

Loss and accuracy ignore padding: a label equal to the model's ``pad_id`` counts for neither.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from attnlens.tiny.data import PAD_ID, SyntheticData, generate_synthetic_data
from attnlens.tiny.model import TransformerModel, build_transformer_model

__all__ = [
    "DEFAULT_TASK_CONFIG",
    "TaskData",
    "TrainingHistory",
    "default_step",
    "evaluate_model",
    "generation_accuracy",
    "make_dataloaders",
    "train_model",
    "train_on_task",
    "warmup_schedule",
]

Batch = Any
StepFn = Callable[[nn.Module, Batch], Tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# The series a history holds, in the order keys() lists them (viz.training_curves reads these).
_SERIES = ("step", "epoch", "loss", "accuracy", "lr", "val_step", "val_epoch", "val_loss", "val_accuracy")


@dataclasses.dataclass
class TrainingHistory(Mapping):
    """What ``train_model`` measured, as plain lists: one entry per optimizer step, and one per
    validation.

    Per step: ``step`` (0, 1, ...; continues across epochs), ``epoch``, ``loss`` (the mean loss
    over the batch's non-padding labels), ``accuracy`` (the share of non-padding labels whose
    arg-max prediction is right, the *token accuracy*), ``lr`` (of the first parameter group).
    Per validation (after each epoch, and every ``eval_every`` steps if asked): ``val_step`` (the
    number of steps done when it was measured), ``val_epoch``, ``val_loss``, ``val_accuracy``.
    Also ``wall_time_s`` (seconds of training, validation included) and ``num_steps``.

    It is a read-only mapping of those series (the non-empty ones), so
    ``attnlens.viz.training_curves(history)`` draws it and ``pandas.DataFrame`` takes
    ``history.steps()``; ``to_dict()`` gives a plain dict.
    """

    step: List[int] = dataclasses.field(default_factory=list)
    epoch: List[int] = dataclasses.field(default_factory=list)
    loss: List[float] = dataclasses.field(default_factory=list)
    accuracy: List[float] = dataclasses.field(default_factory=list)
    lr: List[float] = dataclasses.field(default_factory=list)
    val_step: List[int] = dataclasses.field(default_factory=list)
    val_epoch: List[int] = dataclasses.field(default_factory=list)
    val_loss: List[float] = dataclasses.field(default_factory=list)
    val_accuracy: List[float] = dataclasses.field(default_factory=list)
    wall_time_s: float = 0.0

    # -- mapping of the recorded series --------------------------------------------------------

    def __getitem__(self, key: str) -> List[Any]:
        if key not in _SERIES or not getattr(self, key):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return (key for key in _SERIES if getattr(self, key))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @property
    def num_steps(self) -> int:
        return len(self.loss)

    @property
    def final_val_accuracy(self) -> Optional[float]:
        """The last validation accuracy, or None if there was no validation."""
        return self.val_accuracy[-1] if self.val_accuracy else None

    def to_dict(self) -> Dict[str, Any]:
        """Every field as a plain dict of lists (and ``wall_time_s``)."""
        return dataclasses.asdict(self)

    def steps(self) -> Dict[str, List[Any]]:
        """The per-step series (equal lengths): ``step``, ``epoch``, ``loss``, ``accuracy``, ``lr``."""
        return {key: list(getattr(self, key)) for key in ("step", "epoch", "loss", "accuracy", "lr")}

    def validations(self) -> Dict[str, List[Any]]:
        """The per-validation series (equal lengths)."""
        return {key: list(getattr(self, key)) for key in ("val_step", "val_epoch", "val_loss", "val_accuracy")}


# ----------------------------------------------------------------------------------------------
# one step's maths


def _pad_id_of(model: nn.Module, pad_id: Optional[int]) -> int:
    if pad_id is not None:
        if isinstance(pad_id, bool) or not isinstance(pad_id, numbers.Integral):
            raise TypeError(f"pad_id must be an int, got {type(pad_id).__name__}")
        return int(pad_id)
    return int(getattr(model, "pad_id", PAD_ID))


def default_step(model: nn.Module, batch: Batch) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(logits [B, N, V], labels [B, N])`` for one batch.

    Models with a ``logits_and_labels(src, tgt)`` method (``build_transformer_model``'s) get the
    batch as ``attnlens.tiny.data`` yields it, ``(src, tgt)``; any other model gets ``(inputs, labels)``
    and is called as ``model(inputs)``.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(
            f"a batch must be a pair (src, tgt) or (inputs, labels), got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            + "; pass step_fn=... for other layouts"
        )
    if hasattr(model, "logits_and_labels"):
        return model.logits_and_labels(*batch)
    inputs, labels = batch
    return model(inputs), labels


def _masked_loss(pad_id: int) -> LossFn:
    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=pad_id)

    return loss_fn


def _correct_and_counted(logits: torch.Tensor, labels: torch.Tensor, pad_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
    counted = labels != pad_id
    correct = (logits.argmax(dim=-1) == labels) & counted
    return correct.sum(), counted.sum()


def _to_device(batch: Batch, device: torch.device) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: _to_device(value, device) for key, value in batch.items()}
    return batch


def _model_device(model: nn.Module, device: Union[torch.device, str, None]) -> torch.device:
    if device is not None:
        device = torch.device(device)
        model.to(device)
        return device
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    dataloader: Iterable[Batch],
    *,
    device: Union[torch.device, str, None] = None,
    loss_fn: Optional[LossFn] = None,
    step_fn: Optional[StepFn] = None,
    pad_id: Optional[int] = None,
) -> Tuple[float, float]:
    """``(loss, token_accuracy)`` of ``model`` over ``dataloader``, in eval mode, without gradients.

    Both are over all non-padding labels of all batches (the loss weighted by each batch's number
    of labels). The model's training mode is restored afterwards. Returns ``(nan, nan)`` when the
    loader holds no label.
    """
    pad_id = _pad_id_of(model, pad_id)
    loss_fn = loss_fn or _masked_loss(pad_id)
    step_fn = step_fn or default_step
    device = _model_device(model, device)
    was_training = model.training
    model.eval()
    total_loss, total_correct, total_counted = 0.0, 0, 0
    try:
        for batch in dataloader:
            logits, labels = step_fn(model, _to_device(batch, device))
            correct, counted = _correct_and_counted(logits, labels, pad_id)
            counted = int(counted)
            if counted:
                total_loss += float(loss_fn(logits, labels)) * counted
                total_correct += int(correct)
                total_counted += counted
    finally:
        model.train(was_training)
    if not total_counted:
        return math.nan, math.nan
    return total_loss / total_counted, total_correct / total_counted


@torch.no_grad()
def generation_accuracy(
    model: TransformerModel,
    data: SyntheticData,
    *,
    batch_size: int = 256,
    device: Union[torch.device, str, None] = None,
) -> Dict[str, float]:
    """How well greedy decoding (``model.generate``) reproduces the targets of ``data``.

    Returns ``{"token_accuracy": ..., "sequence_accuracy": ...}``: the share of target tokens (EOS
    included) generated right at their position, and the share of sentences generated exactly.
    Unlike the teacher-forced accuracy of ``train_model``, a wrong token here feeds the next step.
    """
    device = _model_device(model, device)
    was_training = model.training
    model.eval()
    correct_tokens = counted_tokens = correct_sentences = 0
    try:
        for start in range(0, len(data), batch_size):
            src = data.src[start : start + batch_size].to(device)
            expected = data.tgt[start : start + batch_size, 1:].to(device)  # target, EOS, PAD
            generated = model.generate(src, max_new_tokens=expected.shape[1])
            if generated.shape[1] < expected.shape[1]:  # stopped early: all ended
                pad = torch.full(
                    (generated.shape[0], expected.shape[1] - generated.shape[1]),
                    model.pad_id,
                    dtype=generated.dtype,
                    device=device,
                )
                generated = torch.cat([generated, pad], dim=1)
            counted = expected != model.pad_id
            right = (generated == expected) & counted
            correct_tokens += int(right.sum())
            counted_tokens += int(counted.sum())
            correct_sentences += int((right | ~counted).all(dim=1).sum())
    finally:
        model.train(was_training)
    return {
        "token_accuracy": correct_tokens / max(counted_tokens, 1),
        "sequence_accuracy": correct_sentences / max(len(data), 1),
    }


# ----------------------------------------------------------------------------------------------
# the loop


def _progress_bar(total: Optional[int], enabled: bool, description: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=description, unit="step", dynamic_ncols=True, leave=True)


def _check_positive_int(name: str, value: object, allow_none: bool = True) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def train_model(
    model: nn.Module,
    dataloader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    num_epochs: int = 1,
    *,
    val_loader: Optional[Iterable[Batch]] = None,
    device: Union[torch.device, str, None] = None,
    loss_fn: Optional[LossFn] = None,
    progress: bool = True,
    scheduler: Optional[Any] = None,
    max_steps: Optional[int] = None,
    eval_every: Optional[int] = None,
    grad_clip: Optional[float] = 1.0,
    step_fn: Optional[StepFn] = None,
    pad_id: Optional[int] = None,
) -> TrainingHistory:
    """Train ``model`` for ``num_epochs`` passes over ``dataloader``; return its ``TrainingHistory``.

    Args:
        model: a model from ``build_transformer_model`` (batches ``(src, tgt)`` from
            ``attnlens.tiny.data``), or any model with ``step_fn`` or ``(inputs, labels)`` batches
            (see ``default_step``).
        dataloader: yields the training batches (e.g. from ``make_dataloaders``).
        optimizer: a torch optimizer over the model's parameters.
        num_epochs: passes over ``dataloader``.
        val_loader: evaluated (eval mode, no gradients) after every epoch, every ``eval_every``
            steps if given, and after the last step; its loss and token accuracy go to
            ``history.val_loss``/``val_accuracy``.
        device: move the model and the batches there; default: where the model's parameters are.
            CPU and CUDA both work (attnlens attention picks its kernels or its reference by device).
        loss_fn: ``loss_fn(logits [B, N, V], labels [B, N]) -> scalar``; default cross-entropy
            ignoring the padding labels.
        progress: show a tqdm progress bar with the running loss and accuracy (when tqdm is
            installed); False is silent.
        scheduler: a learning-rate scheduler, stepped after every optimizer step (see
            ``warmup_schedule``).
        max_steps: stop after this many optimizer steps in all, even mid-epoch.
        grad_clip: clip the gradient norm to this value (None: no clipping).
        step_fn: ``step_fn(model, batch) -> (logits, labels)``; default ``default_step``.
        pad_id: the label to ignore; default ``model.pad_id`` (or ``attnlens.tiny.PAD_ID``).

    Returns:
        A ``TrainingHistory``: per-step ``loss``, ``accuracy`` (token accuracy), ``lr``, per
        validation ``val_loss``, ``val_accuracy``, ``val_step``, and ``wall_time_s``. The model is
        left in the training mode it came in.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    num_epochs = _check_positive_int("num_epochs", num_epochs, allow_none=False)
    max_steps = _check_positive_int("max_steps", max_steps)
    eval_every = _check_positive_int("eval_every", eval_every)
    if grad_clip is not None and not (isinstance(grad_clip, numbers.Real) and grad_clip > 0):
        raise ValueError(f"grad_clip must be a positive number or None, got {grad_clip!r}")
    pad_id = _pad_id_of(model, pad_id)
    loss_fn = loss_fn or _masked_loss(pad_id)
    step_fn = step_fn or default_step
    device = _model_device(model, device)

    try:
        per_epoch: Optional[int] = len(dataloader)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    total = per_epoch * num_epochs if per_epoch is not None else None
    if max_steps is not None:
        total = max_steps if total is None else min(total, max_steps)
    bar = _progress_bar(total, progress, "training")

    history = TrainingHistory()
    was_training = model.training
    start = time.perf_counter()
    running_loss = running_accuracy = None

    def validate(epoch: int) -> None:
        if val_loader is None or (history.val_step and history.val_step[-1] == len(history.loss)):
            return
        val_loss, val_accuracy = evaluate_model(
            model, val_loader, device=device, loss_fn=loss_fn, step_fn=step_fn, pad_id=pad_id
        )
        history.val_step.append(len(history.loss))
        history.val_epoch.append(epoch)
        history.val_loss.append(val_loss)
        history.val_accuracy.append(val_accuracy)
        if bar is not None:
            bar.set_postfix(loss=f"{running_loss:.3f}", acc=f"{running_accuracy:.3f}", val_acc=f"{val_accuracy:.3f}")
        elif progress:
            print(
                f"epoch {epoch} step {len(history.loss)}: loss {running_loss:.4f}, "
                f"accuracy {running_accuracy:.4f}, validation accuracy {val_accuracy:.4f}"
            )

    try:
        model.train()
        done = False
        for epoch in range(num_epochs):
            for batch in dataloader:
                logits, labels = step_fn(model, _to_device(batch, device))
                loss = loss_fn(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                with torch.no_grad():
                    correct, counted = _correct_and_counted(logits.detach(), labels, pad_id)
                loss_value = float(loss.detach())
                accuracy = int(correct) / max(int(counted), 1)
                history.step.append(len(history.loss))
                history.epoch.append(epoch)
                history.loss.append(loss_value)
                history.accuracy.append(accuracy)
                history.lr.append(float(optimizer.param_groups[0]["lr"]))
                # exponential running averages for the progress bar
                running_loss = loss_value if running_loss is None else 0.95 * running_loss + 0.05 * loss_value
                running_accuracy = accuracy if running_accuracy is None else 0.95 * running_accuracy + 0.05 * accuracy
                if bar is not None:
                    bar.set_postfix(loss=f"{running_loss:.3f}", acc=f"{running_accuracy:.3f}", refresh=False)
                    bar.update(1)
                if eval_every is not None and len(history.loss) % eval_every == 0:
                    validate(epoch)
                    model.train()
                if max_steps is not None and len(history.loss) >= max_steps:
                    done = True
                    break
            if history.loss:
                validate(epoch)
            if done:
                break
    finally:
        model.train(was_training)
        history.wall_time_s = time.perf_counter() - start
        if bar is not None:
            bar.close()
    return history


# ----------------------------------------------------------------------------------------------
# data loaders, schedules, the one-call run


def make_dataloaders(
    data: SyntheticData,
    batch_size: int = 64,
    val_fraction: float = 0.1,
    *,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Tuple[DataLoader, Optional[DataLoader]]:
    """``(train_loader, val_loader)`` over a split of ``data`` (``SyntheticData.split(val_fraction, seed)``).

    Batches are ``(src [B, max_length], tgt [B, max_length + 2])``. The training loader shuffles
    with a generator seeded by ``seed`` (reproducible, torch's global state untouched); the
    validation loader keeps order. ``val_fraction=0`` gives ``(train_loader, None)``. To keep the
    split itself, call ``data.split`` and wrap each part in a ``DataLoader``.
    """
    if not isinstance(data, SyntheticData):
        raise TypeError(f"data must be a SyntheticData (from generate_synthetic_data), got {type(data).__name__}")
    batch_size = _check_positive_int("batch_size", batch_size, allow_none=False)
    train, held_out = data.split(val_fraction, seed=seed)
    if len(train) == 0:
        raise ValueError(f"val_fraction={val_fraction} leaves no training sentence out of {len(data)}")
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last)
    val_loader = DataLoader(held_out, batch_size=max(batch_size, 256)) if len(held_out) else None
    return train_loader, val_loader


def warmup_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: Optional[int] = None, final_factor: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the optimizer's learning rate over ``warmup_steps``, then constant
    or, with ``total_steps``, a cosine decay to ``final_factor`` times it at ``total_steps``.
    Step it once per optimizer step (``train_model(..., scheduler=...)`` does)."""
    warmup_steps = max(int(warmup_steps), 0)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if total_steps is None or total_steps <= warmup_steps:
            return 1.0
        progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class TaskData(NamedTuple):
    """The data of a ``train_on_task`` run: the sentences trained on and the held-out ones."""

    train: SyntheticData
    held_out: SyntheticData


# The defaults of train_on_task, measured to reach >= 95% held-out token accuracy on "reverse"
# in about a minute on a 2-core CPU (see the README, "Training on synthetic data").
DEFAULT_TASK_CONFIG: Dict[str, Any] = dict(
    num_sentences=6000,
    vocab_size=16,
    max_length=10,
    steps=600,
    batch_size=64,
    lr=3e-3,
    warmup_steps=100,
    d_model=64,
    nhead=4,
    num_layers=2,
    dim_feedforward=128,
    dropout=0.0,
    val_fraction=0.1,
)


def train_on_task(
    task: str = "reverse",
    *,
    steps: Optional[int] = None,
    seed: int = 0,
    device: Union[torch.device, str, None] = None,
    progress: bool = True,
    kind: str = "encoder_decoder",
    norm_first: bool = True,
    eval_every: Optional[int] = None,
    **config: Any,
) -> Tuple[TransformerModel, TrainingHistory, TaskData]:
    """Generate a synthetic task, build the default model, train it: ``(model, history, data)``.

    ``task`` is one of ``attnlens.tiny.TASKS`` (``copy``, ``reverse``, ``sort``, ``random``).
    ``config`` overrides ``DEFAULT_TASK_CONFIG``: ``num_sentences``, ``vocab_size``,
    ``max_length`` (of the data), ``batch_size``, ``lr`` (AdamW, peak of ``warmup_schedule`` with
    ``warmup_steps`` and a cosine decay over ``steps``), ``d_model``, ``nhead``, ``num_layers``,
    ``dim_feedforward``, ``dropout``, ``val_fraction``. ``seed`` fixes the data, the split, the
    initialisation, the batch order and dropout; torch's global random state is saved and restored
    around the run.

    Returns the trained model in eval mode, its ``TrainingHistory`` (validated on the held-out
    sentences after every epoch and at the end) and ``TaskData(train, held_out)``.
    """
    unknown = set(config) - set(DEFAULT_TASK_CONFIG)
    if unknown:
        raise TypeError(f"train_on_task got unknown arguments {sorted(unknown)}; known: {sorted(DEFAULT_TASK_CONFIG)}")
    settings = {**DEFAULT_TASK_CONFIG, **config}
    if steps is not None:
        settings["steps"] = steps
    steps = _check_positive_int("steps", settings["steps"], allow_none=False)
    data = generate_synthetic_data(
        settings["num_sentences"], settings["vocab_size"], settings["max_length"], task=task, seed=seed
    )
    train, held_out = data.split(settings["val_fraction"], seed=seed)
    target_device = torch.device(device) if device is not None else torch.device("cpu")
    cuda_devices = [target_device] if target_device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        max_len = 2 * settings["max_length"] + 2 if kind == "decoder" else settings["max_length"] + 2
        model = build_transformer_model(
            settings["vocab_size"],
            settings["d_model"],
            settings["nhead"],
            settings["num_layers"],
            settings["dim_feedforward"],
            settings["dropout"],
            max_len=max_len,
            kind=kind,
            norm_first=norm_first,
        ).to(target_device)
        generator = torch.Generator().manual_seed(seed)
        train_loader = DataLoader(train, batch_size=settings["batch_size"], shuffle=True, generator=generator)
        val_loader = DataLoader(held_out, batch_size=512) if len(held_out) else None
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"])
        scheduler = warmup_schedule(optimizer, settings["warmup_steps"], steps)
        num_epochs = math.ceil(steps / len(train_loader))
        history = train_model(
            model,
            train_loader,
            optimizer,
            num_epochs,
            val_loader=val_loader,
            device=target_device,
            progress=progress,
            scheduler=scheduler,
            max_steps=steps,
            eval_every=eval_every,
        )
    return model.eval(), history, TaskData(train, held_out)
