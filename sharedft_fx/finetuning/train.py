"""`finetune(model, teacher, train_data, val_data, config)`: distil a shared model from the
original, on one process or many (torchrun), with exact resumption.

    >>> result = sharedft_fx.transform(teacher, example)
    >>> tuned = finetune(result.model, teacher, splits.train, splits.val,
    ...                  FinetuneConfig(epochs=3, lr=1e-3), output_dir="runs/ft")
    >>> tuned.best_metric, tuned.model          # a trained copy; result.model is untouched

Data sets are map-style: items are ``(input, label)`` pairs with integer labels (labelled) or
input tensors / 1-tuples (unlabelled: distillation only). The data order of epoch e is a
function of (seed, e), so a checkpoint records only how many batches of the epoch are done.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler

from ..errors import ConfigError, InputError
from ..io import atomic_path, write_json_atomic
from ..modes import eval_mode, restored_modes
from ..numerics import flatten_tensors
from . import distributed as D
from .checkpoint import CHECKPOINT_FILE, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import FinetuneConfig
from .distill import FeatureTaps, check_same_structure, distill_loss
from .optim import build_optimizer, warmup_cosine

__all__ = ["finetune", "FinetuneResult", "evaluate", "METRICS_FILE", "BEST_FILE"]

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
BEST_FILE = "best.safetensors"
CONFIG_FILE = "finetune_config.json"


@dataclass
class FinetuneResult:
    """The trained model (a copy of the one given) and what happened while training it."""

    model: nn.Module
    history: list[dict[str, Any]]            # one record per epoch (train loss, val metrics)
    steps: int
    epochs_done: int
    best_metric: float | None = None
    best_metric_name: str | None = None
    best_epoch: int | None = None
    interrupted: bool = False
    output_dir: Path | None = None
    checkpoint_path: Path | None = None
    metrics_path: Path | None = None
    best_path: Path | None = None
    step_records: list[dict[str, Any]] = field(default_factory=list, repr=False)


class _SkipSampler(Sampler[int]):
    """The indices of `base` after the first `skip` (resumes an epoch mid-way)."""

    def __init__(self, base: Sampler[int], skip: int) -> None:
        self.base, self.skip = base, skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.base)[self.skip:])

    def __len__(self) -> int:
        return max(len(self.base) - self.skip, 0)  # type: ignore[arg-type]


def _as_dataset(data: Any, what: str) -> Dataset:
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, IterableDataset):
        raise InputError(
            f"{what} is an IterableDataset; finetune needs a map-style dataset (len and "
            "indexing) to shard it over processes and resume exactly"
        )
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise InputError(f"{what} must be a torch Dataset (or a DataLoader over one), got "
                         f"{type(data).__name__}")
    if len(data) == 0:
        raise InputError(f"{what} is empty: give it at least one sample")
    return data


def _split_batch(batch: Any) -> tuple[tuple, torch.Tensor | None]:
    """``(inputs as forward() args, labels or None)`` of a collated batch."""
    if isinstance(batch, torch.Tensor):
        return (batch,), None
    if isinstance(batch, (list, tuple)):
        if len(batch) == 2 and isinstance(batch[1], torch.Tensor) and batch[1].dim() == 1 \
                and not batch[1].is_floating_point() and batch[1].dtype != torch.bool:
            x = batch[0]
            return (tuple(x) if isinstance(x, (list, tuple)) else (x,)), batch[1]
        return tuple(batch), None
    raise InputError(
        f"a data item collates to {type(batch).__name__}; items must be input tensors or "
        "(input, integer label) pairs"
    )


def _to(tree: Any, device: torch.device) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.to(device, non_blocking=True)
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to(t, device) for t in tree)
    return tree


def _logits(out: Any) -> torch.Tensor:
    leaves, _ = flatten_tensors(out)
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
            return leaf
    raise InputError("the model outputs hold no floating-point tensor")


def _class_count(data: Dataset) -> tuple[int | None, int | None]:
    """(declared number of classes, largest label) when the dataset tells them cheaply."""
    declared = len(data.classes) if isinstance(getattr(data, "classes", None), Sequence) else None
    targets = getattr(data, "targets", None)
    tensors = getattr(data, "tensors", None)
    if targets is None and isinstance(tensors, tuple) and len(tensors) == 2 \
            and not tensors[1].is_floating_point() and tensors[1].dim() == 1:
        targets = tensors[1]
    largest = int(torch.as_tensor(targets).max()) if targets is not None and len(targets) else None
    return declared, largest


def _check_labels(data: Dataset, labels: torch.Tensor | None, outputs: int, what: str) -> None:
    if labels is None:
        return
    declared, largest = _class_count(data)
    largest = max(largest if largest is not None else -1, int(labels.max()))
    if int(labels.min()) < 0:
        raise InputError(f"{what} holds negative labels; labels must be class indices 0..N-1")
    if declared is not None and declared != outputs:
        raise InputError(
            f"{what} has {declared} classes but the model has {outputs} outputs; fine-tune on "
            "data with the model's classes (or pass unlabelled inputs to distil only)"
        )
    if largest >= outputs:
        raise InputError(
            f"{what} has label {largest} but the model has only {outputs} outputs (labels "
            f"0..{outputs - 1}); the label count does not match the model"
        )


@contextlib.contextmanager
def _signals(enabled: bool) -> Iterator[dict[str, Any]]:
    """Record SIGINT/SIGTERM in a flag (a second signal acts as usual)."""
    state: dict[str, Any] = {"signal": None}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield state
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        if state["signal"] is not None:  # second signal: give up at once
            signal.signal(signum, old[signum])
            signal.raise_signal(signum)
            return
        state["signal"] = signum
        log.warning("received %s: stopping after this step and writing a checkpoint",
                    signal.Signals(signum).name)

    for s in old:
        signal.signal(s, handler)
    try:
        yield state
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _amp(config: FinetuneConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a gradient scaler)."""
    mode = config.amp
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None, False
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError("FinetuneConfig.amp='fp16' needs a CUDA device; use 'bf16' or 'off'")
    return (torch.bfloat16, False) if mode == "bf16" else (torch.float16, True)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module, teacher: nn.Module, data: Dataset | DataLoader, config: FinetuneConfig,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Distillation loss against the teacher and, with labels, accuracy (and the teacher's).

    Both models run in eval mode; their modes are restored afterwards.
    """
    dataset = _as_dataset(data, "val_data")
    device = torch.device(device)
    loader = DataLoader(dataset, batch_size=max(config.batch_size, 256), shuffle=False)
    total = correct = correct_t = 0
    loss_sum = 0.0
    labelled = False
    with eval_mode(model), eval_mode(teacher):
        for batch in loader:
            inputs, labels = _split_batch(batch)
            inputs = _to(inputs, device)
            out, ref = model(*inputs), teacher(*inputs)
            n = _logits(out).shape[0]
            loss_sum += float(distill_loss(out, ref, config.temperature, config.output_loss)) * n
            total += n
            if labels is not None:
                labelled = True
                labels = labels.to(device)
                correct += int((_logits(out).argmax(-1) == labels).sum())
                correct_t += int((_logits(ref).argmax(-1) == labels).sum())
    metrics = {"val_loss": loss_sum / max(total, 1)}
    if labelled:
        metrics["val_accuracy"] = correct / max(total, 1)
        metrics["teacher_val_accuracy"] = correct_t / max(total, 1)
    return metrics


def _write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records),
                       encoding="utf-8")


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def finetune(
    model: nn.Module,
    teacher: nn.Module,
    train_data: Dataset | DataLoader,
    val_data: Dataset | DataLoader | None = None,
    config: FinetuneConfig | None = None,
    *,
    output_dir: str | Path | None = None,
    resume: str | Path | bool = False,
    device: str | torch.device | None = None,
) -> FinetuneResult:
    """Train a copy of `model` (the shared model) to match `teacher` (the original).

    Loss: ``distill_weight · KL(teacher/T || model/T)·T²`` (normalised MSE for non-logit
    outputs) ``+ label_weight · CE`` when the data has labels ``+ feature_weight · feature
    MSE`` at `config.feature_layers`. `model` and `teacher` are never modified: the returned
    `FinetuneResult.model` is a trained copy (the best validation epoch when `keep_best`).

    Under ``torchrun --nproc-per-node=N`` the same call trains with DistributedDataParallel
    (gloo on CPU, nccl on CUDA); each process takes ``batch_size / N`` samples of every global
    batch, and only rank 0 writes files. `output_dir` receives ``checkpoint.pt`` (every
    `checkpoint_every` steps, at epoch ends and on SIGINT/SIGTERM), ``metrics.jsonl`` and
    ``best.safetensors``. ``resume=True`` continues from ``output_dir/checkpoint.pt`` when it
    exists; a path resumes from that file. Before any step, bad input raises `InputError`: empty
    data, labels that do not fit the model's outputs, a teacher whose outputs differ in shape.
    """
    config = FinetuneConfig() if config is None else config
    if not isinstance(config, FinetuneConfig):
        raise ConfigError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    for name, m in (("model", model), ("teacher", teacher)):
        if not isinstance(m, nn.Module):
            raise InputError(f"{name} must be a torch.nn.Module, got {type(m).__name__}")
    train_set = _as_dataset(train_data, "train_data")
    val_set = _as_dataset(val_data, "val_data") if val_data is not None else None
    env = D.setup(device)
    try:
        with restored_modes(teacher):  # the teacher runs in eval mode; give it back as it was
            return _finetune(model, teacher, train_set, val_set, config, env,
                             Path(output_dir) if output_dir is not None else None, resume)
    finally:
        D.teardown(env)


def _resolve_resume(resume: str | Path | bool, out: Path | None) -> Path | None:
    if resume is False or resume is None:
        return None
    if resume is True:
        if out is None:
            raise ConfigError("resume=True needs output_dir (where checkpoint.pt is)")
        path = out / CHECKPOINT_FILE
        return path if path.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise InputError(f"checkpoint {path} to resume from does not exist")
    return path


def _finetune(
    model: nn.Module, teacher_in: nn.Module, train_set: Dataset, val_set: Dataset | None,
    config: FinetuneConfig, env: D.DistEnv, out: Path | None, resume: str | Path | bool,
) -> FinetuneResult:
    if config.batch_size % env.world_size:
        raise ConfigError(
            f"FinetuneConfig.batch_size {config.batch_size} must be divisible by the number of "
            f"processes ({env.world_size})"
        )
    per_rank = config.batch_size // env.world_size
    resume_path = _resolve_resume(resume, out)
    torch.manual_seed(config.seed)

    student = copy.deepcopy(model).to(env.device)
    teacher = teacher_in if env.device.type == "cpu" else copy.deepcopy(teacher_in).to(env.device)
    teacher.eval()

    # ---- preflight: every input problem is an error before the first step
    probe = DataLoader(train_set, batch_size=min(per_rank, len(train_set)), shuffle=False)
    inputs, labels = _split_batch(next(iter(probe)))
    inputs = _to(inputs, env.device)
    with torch.no_grad():
        try:
            with eval_mode(student):
                s_out = student(*inputs)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"the model does not run on a training batch ({type(exc).__name__}: "
                             f"{exc})") from exc
        try:
            t_out = teacher(*inputs)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"the teacher does not run on a training batch "
                             f"({type(exc).__name__}: {exc})") from exc
    check_same_structure(s_out, t_out)
    outputs = int(_logits(s_out).shape[-1])
    has_labels = labels is not None
    _check_labels(train_set, labels, outputs, "train_data")
    if val_set is not None:
        v_inputs, v_labels = _split_batch(next(iter(DataLoader(val_set, batch_size=2))))
        _check_labels(val_set, v_labels, outputs, "val_data")
    if has_labels and config.label_weight > 0 and not _is_2d(s_out):
        raise InputError("labels need 2-D logits as the model's first output; set "
                         "label_weight=0 to distil only")
    taps = FeatureTaps(student, teacher, list(config.feature_layers)) \
        if config.feature_layers and config.feature_weight > 0 else None

    # ---- optimisation set-up
    optimizer = build_optimizer(student, config)
    sampler = DistributedSampler(train_set, num_replicas=env.world_size, rank=env.rank,
                                 shuffle=True, seed=config.seed, drop_last=False)
    batches_per_epoch = math.ceil(len(sampler) / per_rank)
    total_steps = config.epochs * batches_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = warmup_cosine(optimizer, total_steps, config.warmup_steps, config.min_lr_ratio)
    amp_dtype, use_scaler = _amp(config, env.device)
    scaler = torch.amp.GradScaler(env.device.type, enabled=use_scaler)
    ddp: nn.Module = student
    if env.distributed:
        ddp = nn.parallel.DistributedDataParallel(
            student, device_ids=[env.device] if env.device.type == "cuda" else None
        )
    params = [p for p in student.parameters() if p.requires_grad]
    higher_better = has_labels and val_set is not None
    metric_name = ("val_accuracy" if higher_better else "val_loss") if val_set is not None else None

    step = epoch = batches_done = 0
    history: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    best: dict[str, Any] = {"metric": None, "epoch": None, "state": None}
    if resume_path is not None:
        ck = load_checkpoint(resume_path)
        for key, now in (("world_size", env.world_size), ("batch_size", config.batch_size),
                         ("seed", config.seed)):
            if ck[key] != now:
                raise ConfigError(f"checkpoint {resume_path} was written with {key}={ck[key]}, "
                                  f"this run has {now}; resume with the same settings")
        try:
            student.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise InputError(f"checkpoint {resume_path} does not fit this model ({exc})") from None
        scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        step, epoch, batches_done = ck["step"], ck["epoch"], ck["batches_done"]
        history, records, best = ck["history"], ck["records"], ck["best"]
        set_rng_state(ck["rng"])
        log.info("resumed from %s at step %d (epoch %d, batch %d)", resume_path, step, epoch,
                 batches_done)

    checkpoint_path = out / CHECKPOINT_FILE if out is not None else None
    metrics_path = out / METRICS_FILE if out is not None else None
    best_path = out / BEST_FILE if out is not None else None
    if out is not None and env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / CONFIG_FILE, config.to_dict())

    def write_checkpoint() -> None:
        if checkpoint_path is None or not env.is_main:
            return
        save_checkpoint(checkpoint_path, {
            "model": student.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng_state(), "step": step, "epoch": epoch, "batches_done": batches_done,
            "history": history, "records": records, "best": best,
            "world_size": env.world_size, "batch_size": config.batch_size, "seed": config.seed,
            "config": config.to_dict(),
        })
        _write_metrics(metrics_path, records)  # type: ignore[arg-type]

    def done() -> bool:
        return epoch >= config.epochs or (config.max_steps is not None
                                          and step >= config.max_steps)

    interrupted = False
    with _signals(config.handle_signals) as sig:
        while not done() and not interrupted:
            sampler.set_epoch(epoch)
            loader = DataLoader(
                train_set, batch_size=per_rank,
                sampler=_SkipSampler(sampler, batches_done * per_rank),
                num_workers=config.num_workers,
                generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch),
            )
            _set_train_mode(student, config.freeze_bn_stats)
            bar = _progress(config, env, batches_per_epoch, batches_done, epoch)
            t0, seen = time.perf_counter(), 0
            for batch in loader:
                if config.max_steps is not None and step >= config.max_steps:
                    break
                inputs, labels = _split_batch(batch)
                inputs, labels = _to(inputs, env.device), _to(labels, env.device)
                with _autocast(env.device, amp_dtype):
                    with (taps.recording() if taps else contextlib.nullcontext()):
                        out_s = ddp(*inputs)
                        with torch.no_grad():
                            out_t = teacher(*inputs)
                    parts = {}
                    if config.distill_weight > 0:
                        parts["distill"] = distill_loss(out_s, out_t, config.temperature,
                                                        config.output_loss)
                    if labels is not None and config.label_weight > 0:
                        parts["label"] = F.cross_entropy(_logits(out_s).float(), labels)
                    if taps is not None:
                        parts["feature"] = taps.loss()
                    weights = {"distill": config.distill_weight, "label": config.label_weight,
                               "feature": config.feature_weight}
                    loss = sum(weights[k] * v for k, v in parts.items())
                if not torch.isfinite(loss):
                    raise InputError(
                        f"the loss became {float(loss)} at step {step}; lower the learning rate "
                        "(FinetuneConfig.lr) or enable gradient clipping"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                group = optimizer.param_groups[0]
                lr_now = config.lr * group["lr"] / group["initial_lr"]  # the step's base lr
                scheduler.step()
                step += 1
                batches_done += 1
                n = _logits(out_s).shape[0]
                seen += n
                loss_value = float(loss.detach())
                records.append({"kind": "step", "step": step, "epoch": epoch, "loss": loss_value,
                                "lr": lr_now,
                                **{k: float(v.detach()) for k, v in parts.items()}})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    write_checkpoint()
                if D.any_rank(sig["signal"] is not None, env):
                    interrupted = True
                    break
            if bar is not None:
                bar.close()
            if interrupted:
                write_checkpoint()
                log.warning("interrupted at step %d; resume with resume=True", step)
                break
            elapsed = time.perf_counter() - t0
            losses = [r["loss"] for r in records if r["kind"] == "step" and r["epoch"] == epoch]
            record = {"kind": "epoch", "epoch": epoch, "step": step,
                      "train_loss": D.all_reduce_mean(sum(losses) / max(len(losses), 1), env),
                      "seconds": elapsed, "samples_per_second": seen * env.world_size / elapsed
                      if elapsed > 0 else 0.0}
            if val_set is not None and config.eval_every_epoch:
                record.update(evaluate(student, teacher, val_set, config, env.device))
                value = record[metric_name]  # type: ignore[index]
                better = best["metric"] is None or (
                    value > best["metric"] if higher_better else value < best["metric"])
                if better:
                    best = {"metric": value, "epoch": epoch, "state": _cpu_state(student)}
                    if best_path is not None and env.is_main:
                        _save_weights(student, best_path)
            history.append(record)
            records.append(record)
            log.info("epoch %d: %s", epoch + 1, {k: v for k, v in record.items() if k != "kind"})
            epoch += 1
            batches_done = 0
            write_checkpoint()

    if not interrupted and config.keep_best and best["state"] is not None:
        student.load_state_dict(best["state"])
    if metrics_path is not None and env.is_main:
        _write_metrics(metrics_path, records)
    student.train(model.training)
    return FinetuneResult(
        model=student, history=history, steps=step, epochs_done=epoch,
        best_metric=best["metric"], best_metric_name=metric_name, best_epoch=best["epoch"],
        interrupted=interrupted, output_dir=out, checkpoint_path=checkpoint_path,
        metrics_path=metrics_path, best_path=best_path if best["state"] is not None else None,
        step_records=[r for r in records if r["kind"] == "step"],
    )


def _is_2d(out: Any) -> bool:
    return _logits(out).dim() == 2


def _save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    with atomic_path(path) as tmp:
        save_model(model, str(tmp), force_contiguous=True)


def _progress(config: FinetuneConfig, env: D.DistEnv, total: int, initial: int, epoch: int):
    if not (config.progress and env.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{config.epochs}",
                leave=False, dynamic_ncols=True)
