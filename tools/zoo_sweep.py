"""Run `sharedft_fx.transform` over every torchvision model and write ZOO.md.

Each model runs in its own subprocess (``--worker NAME``) under a timeout, with random weights
(nothing is downloaded). Per model it records how the tracer covered it, the conv sites and
groups, the unique parameters before/after at the DEFAULT config, and the output error against
eager at ``ShareConfig(rank="full")`` (relative norm error in float64, plus whether
``torch.testing.assert_close(rtol=1e-4, atol=1e-5)`` holds element-wise).

Usage::

    python tools/zoo_sweep.py                       # all of torchvision.models.list_models()
    python tools/zoo_sweep.py --models resnet18,raft_small --out /tmp/ZOO.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("zoo_sweep")

ROOT = Path(__file__).resolve().parent.parent

# Inputs per model: smaller than the canonical size where the architecture allows it (adaptive
# pooling), to fit the sweep on 2 shared CPU cores. Listed in ZOO.md.
CLS_SIZE = 64
_FIXED_CLS = {  # classification models whose input size is fixed (or has a minimum) by the arch
    "inception_v3": 299, "quantized_inception_v3": 299,
    "maxvit_t": 224,
    "vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224, "vit_l_32": 224, "vit_h_14": 224,
}
# builder kwargs that shrink a fixed-size model (random weights, so the position tables just
# get smaller); the input size must match.
_BUILD_KWARGS: dict[str, dict[str, Any]] = {
    "vit_h_14": {"image_size": 112},
    "vit_l_16": {"image_size": 64},
    "vit_l_32": {"image_size": 64},
    "vit_b_16": {"image_size": 64},
    "vit_b_32": {"image_size": 64},
}
_VIT_SIZES = {"vit_h_14": 112, "vit_l_16": 64, "vit_l_32": 64, "vit_b_16": 64, "vit_b_32": 64}
# Run the slowest last, so that a sweep cut short by a deadline covers the most models.
_SLOW_LAST = ("efficientnet_v2_l", "regnet_y_32gf", "efficientnet_b7", "swin3d_b", "raft_large",
             "inception_v3", "maxvit_t", "vit_h_14", "fcos_resnet50_fpn", "retinanet_resnet50_fpn",
             "fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn",
             "retinanet_resnet50_fpn_v2", "fasterrcnn_resnet50_fpn_v2", "maskrcnn_resnet50_fpn_v2",
             "regnet_y_128gf", "s3d", "mvit_v2_s", "mvit_v1_b")
DET_SIZE = 256


def family(name: str) -> str:
    import torchvision.models as tvm

    for fam, mod in (
        ("detection", tvm.detection), ("segmentation", tvm.segmentation),
        ("video", tvm.video), ("optical_flow", tvm.optical_flow),
        ("quantization", tvm.quantization),
    ):
        if name in tvm.list_models(module=mod):
            return fam
    return "classification"


def build(name: str) -> tuple[Any, tuple, str]:
    """(model, example_inputs, description of inputs and build options)."""
    import torch
    import torchvision
    from sharedft_fx.model_spec import no_download_kwargs

    torch.manual_seed(0)
    fam = family(name)
    kwargs: dict[str, Any] = dict(no_download_kwargs(name))
    kwargs.update(_BUILD_KWARGS.get(name, {}))
    notes: list[str] = []
    if fam == "quantization":
        kwargs["quantize"] = False
        notes.append("quantize=False (float version)")
    if fam == "detection":
        if name.startswith(("fasterrcnn", "maskrcnn", "keypointrcnn")):
            kwargs["box_score_thresh"] = 0.0
            notes.append("box_score_thresh=0")
        else:
            kwargs["score_thresh"] = 0.0
            notes.append("score_thresh=0")
        if not name.startswith("ssd") and name != "fasterrcnn_mobilenet_v3_large_320_fpn":
            kwargs.update(min_size=DET_SIZE, max_size=DET_SIZE)
            notes.append(f"min_size=max_size={DET_SIZE}")
    for key in _BUILD_KWARGS.get(name, {}):
        notes.append(f"{key}={kwargs[key]}")
    model = torchvision.models.get_model(name, **kwargs)
    model.eval()
    g = torch.Generator().manual_seed(1)
    if fam == "detection":
        size = {"ssd300_vgg16": 300, "ssdlite320_mobilenet_v3_large": 320,
                "fasterrcnn_mobilenet_v3_large_320_fpn": 320}.get(name, DET_SIZE)
        inputs: tuple = ([torch.rand(3, size, size, generator=g)],)
        shape = f"[3x{size}x{size}]"
    elif fam == "optical_flow":
        a = torch.rand(1, 3, 128, 128, generator=g)
        b = torch.rand(1, 3, 128, 128, generator=g)
        inputs, shape = (a, b), "(1x3x128x128, 1x3x128x128)"
    elif fam == "video":
        t, hw = {"s3d": (16, 224), "mvit_v1_b": (16, 224), "mvit_v2_s": (16, 224)}.get(name, (8, 64))
        inputs = (torch.randn(1, 3, t, hw, hw, generator=g),)
        shape = f"1x3x{t}x{hw}x{hw}"
    else:
        size = _VIT_SIZES.get(name, _FIXED_CLS.get(name, CLS_SIZE))
        inputs = (torch.randn(1, 3, size, size, generator=g),)
        shape = f"1x3x{size}x{size}"
    return model, inputs, "; ".join([shape] + notes)


def calibrate_norms(model: Any, inputs: tuple) -> int:
    """Set every BatchNorm's running statistics from the example input, in one eval forward.

    Random-initialised eval-mode BatchNorm (mean 0, var 1) lets activations shrink layer after
    layer (ssdlite's deepest features reach 1e-25), and then the output does not depend on the
    shared convolutions at all and the full-rank comparison proves nothing. A pre-hook on each
    norm sets its statistics from its actual input (per channel over batch and space; var 1
    where a channel has a single value), so activations keep unit scale. Returns the count.
    """
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm
    from torchvision.ops.misc import FrozenBatchNorm2d

    def hook(mod: Any, args: tuple) -> None:
        x = args[0]
        dims = [d for d in range(x.dim()) if d != 1]
        n = x.numel() // max(1, x.shape[1])
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False).clamp_min(1e-4) if n > 1 else torch.ones_like(mean)
        mod.running_mean.copy_(mean)
        mod.running_var.copy_(var)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, (_BatchNorm, FrozenBatchNorm2d)) and m.running_mean is not None]
    try:
        with torch.no_grad():
            model.eval()
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return len(handles)


def _to_double(tree: Any) -> Any:
    import torch
    from torch.utils import _pytree as pytree

    return pytree.tree_map(
        lambda t: t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, tree)


def noise_floor(model: Any, inputs: tuple) -> float:
    """How much the eager output moves when conv weights get float32 rounding-sized noise.

    Each conv weight (dim >= 3) is multiplied element-wise by 1 + u·n, n ~ N(0, 1), u = 2^-24
    (float32 unit roundoff). A full-rank rewrite reconstructs weights to about that precision,
    so its output error cannot be expected below this floor.
    """
    import copy

    import torch
    from sharedft_fx.numerics import tree_relative_error

    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in other.parameters():
            if p.dim() >= 3 and p.is_floating_point():
                p.mul_(1 + 2.0 ** -24 * torch.randn(p.shape, generator=g))
        ref = model(*inputs)
        out = other(*inputs)
    return tree_relative_error(out, ref)


def wake_layer_scales(model: Any) -> int:
    """Set ConvNeXt-style layer scales initialised to 1e-6 to 1; returns how many were set.

    With the 1e-6 init every residual block adds ~1e-6 of its branch, so the output does not
    depend on the block's convolutions and the full-rank check proves nothing.
    """
    import torch

    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rpartition(".")[2] == "layer_scale" and float(p.abs().max()) <= 1e-5:
                p.fill_(1.0)
                n += 1
    return n


def _assert_close(out: Any, ref: Any) -> tuple[bool, str]:
    import torch
    from sharedft_fx.numerics import flatten_tensors

    a, _ = flatten_tensors(out)
    b, _ = flatten_tensors(ref)
    try:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        return True, ""
    except AssertionError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        return False, " ".join(lines[:3])[:200]


def _conv_sites(result: Any) -> int:
    """Conv sites found by find_conv_sites (shared and unshared)."""
    shared = sum(len(g.sites) for g in result.groups)
    return shared + len(result.skipped)


def worker(name: str) -> dict[str, Any]:
    import torch

    import sharedft_fx
    from sharedft_fx import ShareConfig
    from sharedft_fx.errors import VerificationError
    from sharedft_fx.modes import eval_mode

    rec: dict[str, Any] = {"model": name, "family": family(name)}
    t0 = time.perf_counter()
    model, inputs, desc = build(name)
    rec["inputs"] = desc
    rec["build_s"] = time.perf_counter() - t0
    rec["params"] = sum(p.numel() for p in model.parameters())
    rec["layer_scales_set"] = wake_layer_scales(model)
    rec["norms_calibrated"] = calibrate_norms(model, inputs)
    stage = "default config"
    try:
        rec["noise_floor"] = noise_floor(model, inputs)
        t0 = time.perf_counter()
        res = sharedft_fx.transform(model, inputs)
        rec["default_s"] = time.perf_counter() - t0
        rec.update(
            traced=list(res.trace.traced), leaves=dict(res.trace.leaves),
            unverified=list(res.trace.unverified), sites=_conv_sites(res),
            shared_sites=sum(len(g.sites) for g in res.groups), groups=len(res.groups),
            params_before=res.params_before, params_after=res.params_after, ratio=res.ratio,
            default_error=res.output_error, modified=res.modified,
        )
        del res
        stage = "rank='full'"
        t0 = time.perf_counter()
        try:
            full = sharedft_fx.transform(model, inputs, ShareConfig(rank="full"))
        except VerificationError as exc:
            # The core's own check (relative error <= 1e-4 after share_conv_weights) fired;
            # measure the error without it, to compare with the model's noise floor.
            rec["core_check"] = str(exc).splitlines()[0][:300]
            full = sharedft_fx.transform(model, inputs, ShareConfig(rank="full", verify=False))
        rec["full_s"] = time.perf_counter() - t0
        rec["full_error"] = full.output_error
        rec["full_modified"] = full.modified
        with eval_mode(model), torch.no_grad():
            ref = model(*inputs)
        with eval_mode(full.model), torch.no_grad():
            out = full.model(*inputs)
        rec["assert_close"], rec["assert_close_msg"] = _assert_close(out, ref)
        # Determinism of eager itself (detection post-processing can reorder on ties).
        with eval_mode(model), torch.no_grad():
            ref2 = model(*inputs)
        from sharedft_fx.numerics import tree_relative_error

        rec["eager_repeat_error"] = tree_relative_error(ref2, ref)
        if not (rec["full_error"] <= 1e-4):
            # Separate a wrong rewrite from an ill-conditioned model: in float64 the rounding
            # of bank + B·A is ~1e-16, so an exact rewrite gives ~1e-10 even after the model
            # amplifies it ~1e5x, and a wrong one stays large.
            stage = "rank='full' in float64"
            del full, out, ref, ref2  # the largest models need the memory for the float64 copy
            gc.collect()
            model64 = model.double()
            inputs64 = tuple(_to_double(x) for x in inputs)
            f64 = sharedft_fx.transform(model64, inputs64,
                                        ShareConfig(rank="full", verify=False))
            rec["full_error_f64"] = f64.output_error
        rec["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - recorded in ZOO.md
        rec["status"] = "failed"
        first = (str(exc).strip().splitlines() or [""])[0]
        rec["error"] = f"{stage}: {type(exc).__name__}: {first}"[:600]
        log.exception("%s failed", name)
    return rec


def run_one(name: str, timeout: float, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rec.json"
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--record", str(out)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"model": name, "status": "timeout",
                    "error": f"no result within the {timeout:.0f} s timeout", "wall_s": timeout}
        wall = time.perf_counter() - t0
        if out.is_file():
            rec = json.loads(out.read_text())
        else:
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            rec = {"model": name, "status": "crashed",
                   "error": f"worker exited {proc.returncode}: {' | '.join(tail)}"[:600]}
        rec["wall_s"] = wall
        return rec


def _fmt_err(x: Any) -> str:
    if x is None:
        return "-"
    return "inf" if x == float("inf") else f"{x:.1e}"


def coverage(rec: dict[str, Any]) -> str:
    if rec.get("status") != "ok":
        return rec.get("status", "?")
    if rec.get("traced") == [""] and not rec.get("leaves"):
        return "traced"
    return "leaf fallback"


def matched(rec: dict[str, Any]) -> bool:
    err = rec.get("full_error")
    return rec.get("status") == "ok" and err is not None and err <= 1e-4


def within_floor(rec: dict[str, Any]) -> bool:
    """Full-rank error at most 10x the model's own float32 noise floor (or <= 1e-4)."""
    err, floor = rec.get("full_error"), rec.get("noise_floor")
    if rec.get("status") != "ok" or err is None:
        return False
    return err <= 1e-4 or (floor is not None and err <= 10 * floor)


def exact_f64(rec: dict[str, Any]) -> bool:
    """Matched at full rank in float32 (<= 1e-4), or exactly (<= 1e-9) once run in float64."""
    f64 = rec.get("full_error_f64")
    return matched(rec) or (rec.get("status") == "ok" and f64 is not None and f64 <= 1e-9)


def render(records: list[dict[str, Any]], command: str, started: str, elapsed: float,
           threads: int, timeout: float) -> str:
    n = len(records)
    counts = {k: sum(coverage(r) == k for r in records)
              for k in ("traced", "leaf fallback", "failed", "timeout", "crashed", "not run")}
    n_match = sum(matched(r) for r in records)
    n_close = sum(bool(r.get("assert_close")) for r in records)
    n_floor = sum(within_floor(r) for r in records)
    n_f64 = sum(exact_f64(r) for r in records)
    n_f64_run = sum(r.get("full_error_f64") is not None for r in records)
    n_core = sum(bool(r.get("core_check")) for r in records)
    n_insens = sum(bool(r.get("modified")) and (r.get("default_error") or 0.0) < 1e-4
                   for r in records)
    n_unmod = sum(r.get("status") == "ok" and not r.get("full_modified") for r in records)
    lines = [
        "# ZOO: sharedft-fx over torchvision.models",
        "",
        f"Generated by `{command}` on {started} (UTC), {elapsed / 60:.1f} min, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s) shared with "
        f"other jobs, {threads} torch thread(s) per model, {timeout:.0f} s timeout per model. "
        "Random weights (nothing downloaded), one subprocess per model.",
        "",
        "## Summary",
        "",
        f"- models: {n}",
        f"- transformed: {counts['traced'] + counts['leaf fallback']} "
        f"(fully traced {counts['traced']}, leaf fallback {counts['leaf fallback']}); "
        f"failed {counts['failed']}, timeout {counts['timeout']}, crashed {counts['crashed']}, "
        f"not run {counts['not run']}",
        f"- matching eager at rank='full' (relative norm error <= 1e-4): {n_match} of {n}",
        f"- matching eager at rank='full' within 10x the model's own float32 noise floor "
        f"(see *floor*): {n_floor} of {n}",
        f"- matching at rank='full' in float32 (<= 1e-4) or, where float32 missed, exactly "
        f"in float64 (model and inputs cast to double, relative error <= 1e-9; "
        f"{n_f64_run} rerun in float64): {n_f64} of {n}",
        f"- the core's own full-rank check (VerificationError, relative error > 1e-4 after "
        f"share_conv_weights) fired: {n_core} (measured again with verify=False)",
        f"- element-wise `assert_close(rtol=1e-4, atol=1e-5)` at rank='full': {n_close} of {n}",
        f"- nothing to share (model unchanged at rank='full', check trivially exact): {n_unmod}",
        f"- output insensitive to the shared convs (default-config error < 1e-4; the "
        f"full-rank check proves little there): {n_insens}",
        "",
        "Columns: *coverage* = `traced` (the whole model is one GraphModule), `leaf fallback` "
        "(some modules ran eagerly, their children were traced; `eager` lists them), or the "
        "failure. *sites* = conv sites found, *shared* = sites in groups at the default config, "
        "*params* = unique parameters before -> after at the default config "
        "(`ShareConfig()`), *err default* = relative output error at the default config "
        "(expected to be large: no fine-tuning), *err full* = `result.output_error` at "
        "`ShareConfig(rank='full')` (||out-ref||/||ref||, float64, max over output tensors), "
        "*close* = `torch.testing.assert_close(rtol=1e-4, atol=1e-5)` on the full-rank output, "
        "*floor* = the model's float32 noise floor: relative change of the eager output when every "
        "conv weight is multiplied by 1 + 2^-24·N(0,1) (float32 rounding; a full-rank rewrite "
        "cannot be expected to do better), "
        "*eager rep* = relative error of eager against itself on a second run (non-zero means "
        "the model's own output is not reproducible, e.g. detection post-processing).",
        "",
        "Inputs: classification models at 1x3x64x64 (smaller than 224 to save time; adaptive "
        "pooling makes them size-agnostic), except inception_v3 (299) and maxvit_t (224, fixed "
        "by its partitions); ViTs are built with a smaller `image_size` (random weights: only "
        "the position table shrinks); video models at 1x3x8x64x64 (s3d 1x3x16x224x224, its "
        "pooling is fixed; MViTs 1x3x16x224x224, fixed by their builders); detection "
        "models get one 3x256x256 image (ssd300 3x300x300), built with min_size=max_size=256 "
        "and a score threshold of 0 so outputs are non-empty (ssdlite320 keeps its 320); RAFT two 1x3x128x128 images. "
        "Before the sweep every BatchNorm (and FrozenBatchNorm2d) gets running statistics "
        "measured on the example input (`calibrate_norms`): with random-init statistics "
        "(mean 0, var 1) activations vanish with depth (ssdlite320's deepest features were "
        "1e-25, so its output did not depend on any shared conv and the full-rank check was "
        "vacuous). *err default* shows the check is not vacuous: a large value means the "
        "output does depend on the shared convs; `insensitive` in *coverage* marks models where "
        "it stays below 1e-4 even so. ConvNeXt's `layer_scale` parameters (initialised to "
        "1e-6, which makes every block's branch invisible in the output) are set to 1 for the "
        "same reason. "
        "The `inputs` column gives each model's exact inputs and build options.",
        "",
        "| model | family | coverage | sites | shared | groups | params before | params after "
        "| ratio | err default | err full | floor | close | eager rep | transform s (default/full) "
        "| inputs | eager / failure |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: r["model"]):
        if r.get("status") == "ok":
            eager = "; ".join(f"`{k or '<root>'}`: {v}" for k, v in r.get("leaves", {}).items())
            if len(eager) > 400:
                eager = eager[:400] + f"... ({len(r['leaves'])} leaves)"
            if r.get("full_error_f64") is not None:
                eager = (eager + "; " if eager else "") + (
                    f"float64 full-rank error {_fmt_err(r['full_error_f64'])}")
            if r.get("core_check"):
                eager = (eager + "; " if eager else "") + "core check: " + r["core_check"]
            if not r.get("assert_close") and r.get("assert_close_msg"):
                eager = (eager + "; " if eager else "") + "assert_close: " + r["assert_close_msg"]
            cov = coverage(r)
            if r.get("modified") and (r.get("default_error") or 0.0) < 1e-4:
                cov += ", insensitive"
            lines.append(
                f"| {r['model']} | {r.get('family', '')} | {cov} | {r['sites']} "
                f"| {r['shared_sites']} | {r['groups']} | {r['params_before']:,} "
                f"| {r['params_after']:,} | {r['ratio']:.3f} | {_fmt_err(r.get('default_error'))} "
                f"| {_fmt_err(r.get('full_error'))} | {_fmt_err(r.get('noise_floor'))} "
                f"| {'yes' if r.get('assert_close') else 'no'} "
                f"| {_fmt_err(r.get('eager_repeat_error'))} "
                f"| {r.get('default_s', 0):.1f}/{r.get('full_s', 0):.1f} | {r.get('inputs', '')} "
                f"| {eager.replace('|', '/')} |"
            )
        else:
            lines.append(
                f"| {r['model']} | {r.get('family', '')} | {r.get('status')} | | | | | | | | | | "
                f"| | | {r.get('inputs', '')} | {str(r.get('error', '')).replace('|', '/')} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated names (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="models run in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per model")
    parser.add_argument("--out", default="ZOO.md")
    parser.add_argument("--json", default="", help="also write the raw records here")
    parser.add_argument("--from-json", default="",
                        help="only re-render --out from records saved by --json; models of "
                             "--models (default: all) without a record are listed as not run")
    parser.add_argument("--note", default="", help="a line added under the header")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.worker:
        import torch

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        rec = worker(args.worker)
        from sharedft_fx.io import write_json_atomic

        write_json_atomic(args.record, rec)
        return 0

    import torchvision
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from sharedft_fx.io import write_json_atomic, write_text_atomic

    names = [m for m in args.models.split(",") if m] or torchvision.models.list_models()
    unknown = sorted(set(names) - set(torchvision.models.list_models()))
    if unknown:
        log.error("unknown model(s): %s", ", ".join(unknown))
        return 2
    if args.from_json:
        files = args.from_json.split(",")
        saved = json.loads(Path(files[0]).read_text())
        if isinstance(saved, list):  # an older record file: take the header of --out
            import re

            head = Path(args.out).read_text() if Path(args.out).is_file() else ""
            m = re.search(r"Generated by `([^`]*)` on ([0-9-]+ [0-9:]+) \(UTC\), ([0-9.]+) min, "
                          r".*?(\d+) torch thread.*?(\d+) s timeout", head, re.S)
            if not m:
                log.error("%s has no header to take the run's command and date from", args.out)
                return 2
            saved = {"records": saved, "command": m.group(1), "started": m.group(2),
                     "elapsed": float(m.group(3)) * 60, "threads": int(m.group(4)),
                     "timeout": float(m.group(5))}
        records = saved["records"]
        for extra in files[1:]:  # later files (reruns of some models) replace earlier records
            more = json.loads(Path(extra).read_text())
            more = more["records"] if isinstance(more, dict) else more
            again = {r["model"] for r in more}
            records = [r for r in records if r["model"] not in again] + more
        done = {r["model"] for r in records}
        records += [{"model": m, "status": "not run",
                     "error": "no record: the sweep was stopped before this model ran"}
                    for m in names if m not in done]
        text = render(records, saved["command"], saved["started"], saved["elapsed"],
                      saved["threads"], saved["timeout"])
        if args.note:
            text = text.replace("\n## Summary", f"\n{args.note}\n\n## Summary", 1)
        write_text_atomic(args.out, text)
        return 0
    started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    command = "python tools/zoo_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def one(name: str) -> dict[str, Any]:
        rec = run_one(name, args.timeout, args.threads)
        log.info("%-40s %-14s err_full=%s %.0fs %s", name, coverage(rec),
                 _fmt_err(rec.get("full_error")), rec.get("wall_s", 0), rec.get("error", ""))
        return rec

    if not args.models:  # an explicit list runs in the order given
        names.sort(key=lambda n: (_SLOW_LAST.index(n) if n in _SLOW_LAST else -1))
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        # as_completed: a record is saved as soon as its model ends, not in submission order
        for future in as_completed([pool.submit(one, n) for n in names]):
            rec = future.result()
            records.append(rec)
            # rewrite after every model so a partial sweep is still readable
            write_text_atomic(args.out, render(records, command.strip(), started,
                                               time.perf_counter() - t0, args.threads,
                                               args.timeout))
            if args.json:
                write_json_atomic(args.json, {
                    "records": records, "command": command.strip(), "started": started,
                    "elapsed": time.perf_counter() - t0, "threads": args.threads,
                    "timeout": args.timeout})
    bad = [r["model"] for r in records if not matched(r)]
    log.info("wrote %s: %d models, %d not matching at full rank: %s", args.out, len(records),
             len(bad), ", ".join(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
