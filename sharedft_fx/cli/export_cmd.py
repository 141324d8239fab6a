"""``sharedft-fx export MODEL_OR_DIR --out FILE.onnx``: compact ONNX, verified in ONNX Runtime.

MODEL_OR_DIR is a model spec (the model is transformed first, with the config options) or a
directory written by ``sharedft-fx transform --out DIR`` (its recipe names the model spec)::

    sharedft-fx export torchvision:resnet18 --out r18.onnx --input-shape 1,3,224,224
    sharedft-fx export out/r18-shared --out r18.onnx --mode dense
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..export import EXPORT_MODES, EXTERNAL_DATA_THRESHOLD, export_onnx
from ..model_spec import build_model
from ..serialization import load
from ..transform import transform
from .common import add_config_args, add_model_args, config_from_args, example_from_args
from .common import model_from_args, saved_model_spec

__all__ = ["add_parser", "run"]



def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export ONNX with every shared tensor stored once, verified in ONNX Runtime",
        description="MODEL is a model spec (transformed first) or a saved transform directory.",
    )
    add_model_args(p)
    add_config_args(p)
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--mode", choices=EXPORT_MODES, default="compact",
                   help="compact: banks + factors, weights computed in the graph (default); "
                        "dense: links merged into per-layer weights")
    p.add_argument("--opset", type=int, help="ONNX opset (default: a recent one, 20)")
    p.add_argument("--static-batch", action="store_true",
                   help="fix the batch axis to the example's (default: dynamic batch)")
    p.add_argument("--random-inputs", type=int, default=2,
                   help="random inputs checked in ONNX Runtime besides the example (default 2)")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (default 1e-3)")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (default 1e-4)")
    p.add_argument("--external-data-threshold", type=int, default=EXTERNAL_DATA_THRESHOLD,
                   help="tensor bytes above which data goes to FILE.onnx.data (default 1 GiB)")
    return p


def _model_from_saved(args: argparse.Namespace, directory: Path) -> nn.Module:
    _, spec = saved_model_spec(directory)
    torch.manual_seed(args.seed)
    return load(build_model(spec, num_classes=args.num_classes), directory).eval()


def run(args: argparse.Namespace) -> int:
    source = Path(args.model)
    example = example_from_args(args)
    if source.is_dir():
        if args.weights:
            raise InputError("--weights does not apply to a saved transform directory")
        model = _model_from_saved(args, source)
    else:
        config = config_from_args(args)
        model = transform(model_from_args(args), example, config).model
    result = export_onnx(
        model, example, args.out, mode=args.mode, opset=args.opset,
        dynamic_batch=not args.static_batch, verify=True, random_inputs=args.random_inputs,
        rtol=args.rtol, atol=args.atol, external_data_threshold=args.external_data_threshold,
    )
    print(result.summary())
    return 0
