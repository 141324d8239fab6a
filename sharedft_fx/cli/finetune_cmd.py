"""``sharedft-fx finetune MODEL --data digits|FOLDER --epochs N --out DIR``: share, recalibrate
BatchNorm and fine-tune with distillation from the original; saves weights + recipe.

Runs unchanged under ``torchrun --nproc-per-node=N -m sharedft_fx finetune ...`` (rank 0 writes).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


from torch.utils.data import DataLoader

from ..calibration import recalibrate_bn
from ..errors import ConfigError
from ..finetuning import FinetuneConfig, finetune
from ..io import atomic_path, read_json, sha256_file, write_json_atomic
from ..serialization import RECIPE_FILE, WEIGHTS_FILE, load, read_recipe, save
from ..transform import transform
from .common import add_config_args, add_model_args, config_from_args, model_from_args


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("finetune", help="share conv weights, then fine-tune with distillation")
    add_model_args(p)
    add_config_args(p)
    p.add_argument("--data", required=True,
                   help="'digits' (built-in) or an image folder (FOLDER/train and FOLDER/val "
                        "with one sub-folder per class, or class sub-folders directly)")
    p.add_argument("--image-size", type=int, default=224, help="image folder crop size")
    p.add_argument("--digits-size", type=int, default=16, help="digits image size")
    p.add_argument("--shared", help="a saved transform (sharedft-fx transform --out) to start from")
    p.add_argument("--out", required=True, help="output directory (checkpoints, metrics, model)")
    p.add_argument("--finetune-config", help="FinetuneConfig as a JSON file")
    p.add_argument("--epochs", type=int, help="passes over the training data")
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps")
    p.add_argument("--recalibrate-batches", type=int, default=20,
                   help="BatchNorm recalibration batches before fine-tuning (0: none)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    data = read_json(args.finetune_config, "fine-tune config") if args.finetune_config else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{args.finetune_config} must hold a JSON object")
    for key in ("epochs", "batch_size", "lr", "checkpoint_every"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.no_progress:
        data["progress"] = False
    return FinetuneConfig.from_dict(data)


def _datasets(args: argparse.Namespace):
    if args.data == "digits":
        from ..data import digits_splits

        s = digits_splits(size=args.digits_size)
        return s.train, s.val
    from ..data import image_folder

    root = Path(args.data)
    if (root / "train").is_dir():
        val = image_folder(root / "val", args.image_size, train=False) \
            if (root / "val").is_dir() else None
        return image_folder(root / "train", args.image_size, train=True), val
    return image_folder(root, args.image_size, train=True), None


def run(args: argparse.Namespace) -> int:
    config = _finetune_config(args)
    train, val = _datasets(args)
    teacher = model_from_args(args)
    example = train[0][0].unsqueeze(0) if isinstance(train[0], (tuple, list)) else train[0][None]
    result = None
    if args.shared:
        shared = load(teacher, args.shared)
    else:
        result = transform(teacher, example, config_from_args(args))
        shared = result.model
    if args.recalibrate_batches:
        recalibrate_bn(shared, DataLoader(train, batch_size=min(config.batch_size, 128)),
                       batches=args.recalibrate_batches)
    out = Path(args.out)
    tuned = finetune(shared, teacher, train, val, config, output_dir=out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 130 if tuned.interrupted else 0
    for rec in tuned.history:
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()
                 if k != "kind"}
        print(json.dumps(shown))
    if tuned.interrupted:
        print(f"interrupted at step {tuned.steps}; continue with --resume (checkpoint in {out})")
        return 130
    if result is not None:
        import dataclasses

        save(dataclasses.replace(result, model=tuned.model.cpu()), out, model_spec=args.model)
    else:
        from safetensors.torch import save_model

        with atomic_path(out / WEIGHTS_FILE) as tmp:
            save_model(tuned.model.cpu(), str(tmp), force_contiguous=True)
        recipe = read_recipe(args.shared)
        recipe["weights_sha256"] = sha256_file(out / WEIGHTS_FILE)
        write_json_atomic(out / RECIPE_FILE, recipe)
    best = f", best {tuned.best_metric_name} {tuned.best_metric:.4f}" \
        if tuned.best_metric is not None else ""
    print(f"fine-tuned {tuned.steps} steps{best}; saved {out / WEIGHTS_FILE} and "
          f"{out / RECIPE_FILE}")
    return 0
