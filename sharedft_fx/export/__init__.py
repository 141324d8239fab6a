"""ONNX export in which every shared tensor is stored once, verified in ONNX Runtime.

One concern per module:

- `api`: `export_onnx` and `ExportResult` (the pipeline below, in order)
- `exporters`: torch module -> in-memory ModelProto (and `merge_links` for mode="dense")
- `accounting`: bytes of torch and ONNX tensors; the size invariant
- `files`: atomic writes, external data above a threshold
- `verify`: `onnx.checker` and ONNX Runtime against torch
- `runtime`: `ort_session(path, memory="fast" | "shared")`
"""

from __future__ import annotations

from .accounting import check_size, onnx_tensor_bytes, torch_bytes
from .api import EXPORT_MODES, ExportResult, export_onnx
from .exporters import EXPORTERS, merge_links
from .files import EXTERNAL_DATA_THRESHOLD
from .runtime import MEMORY_MODES, ort_session
from .verify import OrtCheck

__all__ = [
    "export_onnx",
    "ExportResult",
    "OrtCheck",
    "ort_session",
    "merge_links",
    "check_size",
    "onnx_tensor_bytes",
    "torch_bytes",
    "EXPORT_MODES",
    "EXPORTERS",
    "MEMORY_MODES",
    "EXTERNAL_DATA_THRESHOLD",
]
