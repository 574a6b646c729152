"""``python -m zoo_onnx_runtime`` (``python -m export.runtime`` in zoo-onnx) runs ``zoo-onnx-runtime``."""

from .cli import main

main()
