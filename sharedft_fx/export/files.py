"""Write an ONNX model atomically: one file, or the model plus one external-data file.

Protobuf caps a file at 2 GB, so a model whose tensors exceed `threshold` bytes is written as::

    out/model.onnx          graph; each tensor points at a byte range of the file below
    out/model.onnx.data     all tensors, referenced by the relative name "model.onnx.data"

Both files are first written into a hidden temporary folder beside the target, checked there
(`validate`), and only then moved into place; on any failure the folder is removed and a
previous export at the same path stays intact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from ..errors import ExportError
from ..io import atomic_path

__all__ = ["EXTERNAL_DATA_THRESHOLD", "data_file_name", "write_onnx"]

log = logging.getLogger(__name__)

# Far enough under protobuf's 2 GiB limit to leave room for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1 << 30


def data_file_name(path: Path) -> str:
    """The external-data file written beside `path`, e.g. ``model.onnx.data``."""
    return path.name + ".data"


def write_onnx(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    tensor_bytes: int,
    threshold: int = EXTERNAL_DATA_THRESHOLD,
    validate: Callable[[Path], None] | None = None,
) -> tuple[Path, ...]:
    """Write `model` to `path` (external data when `tensor_bytes` > `threshold`).

    `validate(tmp_path)` runs on the written files before they are moved into place; an
    exception from it aborts the write. Returns the final paths (model file first). `model`
    may be modified (tensors converted to external references).
    """
    target = Path(path)
    if target.is_dir():
        raise ExportError(f"{target} is a directory; give the path of the .onnx file to write")
    target.parent.mkdir(parents=True, exist_ok=True)
    external = tensor_bytes > threshold
    data_name = data_file_name(target)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        tmp_model = tmp_dir / target.name
        try:
            if external:
                onnx.save_model(
                    model, os.fspath(tmp_model), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=data_name, size_threshold=1024,
                    convert_attribute=False,
                )
            else:
                onnx.save_model(model, os.fspath(tmp_model))
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot write {target}: {exc}") from exc
        if validate is not None:
            validate(tmp_model)
        names = [data_name, target.name] if external else [target.name]
        finals = []
        for name in names:  # the data file first: a model file never points at missing data
            final = target.parent / name
            with atomic_path(final) as tmp:
                os.replace(tmp_dir / name, tmp)
            finals.append(final)
        stale = target.parent / data_name
        if not external and stale.is_file():
            log.info("removing %s left by an earlier export with external data", stale)
            stale.unlink()
        finals.reverse()
        return tuple(finals)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp_dir)
