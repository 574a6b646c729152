"""ONNX export with proven torch/onnxruntime parity.

Names load on first use, so `import export.runtime` (onnxruntime + numpy only) and the
`zoo` commands stay free of torch until they export something.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from export.bundle import write_bundle, write_onnx
    from export.onnx_export import ExportError, ExportOptions, to_onnx
    from export.parity import ParityError, ParityReport, check_parity

__all__ = ["ExportError", "ExportOptions", "ParityError", "ParityReport", "check_parity", "to_onnx", "write_bundle", "write_onnx"]

_HOME = {
    "ExportError": "export.onnx_export",
    "ExportOptions": "export.onnx_export",
    "to_onnx": "export.onnx_export",
    "ParityError": "export.parity",
    "ParityReport": "export.parity",
    "check_parity": "export.parity",
    "write_bundle": "export.bundle",
    "write_onnx": "export.bundle",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
