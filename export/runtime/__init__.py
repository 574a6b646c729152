"""Run and verify exported models with onnxruntime and numpy only: never imports torch, onnx or zoo.

from export.runtime import OnnxModel, verify_bundle
y = OnnxModel("mlp.onnx").run(x)
verify_bundle("mlp-bundle").ok                        # or runtime="openvino" / "tract" (optional extras)
                                                      # BundleDamagedError first if any file differs
The same directory is the torch-free distribution zoo-onnx-runtime (its pyproject.toml), imported
there as ``zoo_onnx_runtime``: so its modules import each other relatively, never as ``export.``.
"""

from .backends import RUNTIMES, RuntimeLoadError, RuntimeMissingError
from .compare import OutputVerdict, Tolerance, compare_output
from .model import InputError, ModelFileError, OnnxModel
from .tensor_proto import TensorProtoError, encode_tensor, read_tensor
from .verify import (
    BundleDamagedError,
    BundleError,
    BundleMismatchError,
    VerifyReport,
    is_bundle,
    verify_bundle,
)

__all__ = [
    "RUNTIMES",
    "BundleDamagedError",
    "BundleError",
    "BundleMismatchError",
    "InputError",
    "ModelFileError",
    "OnnxModel",
    "OutputVerdict",
    "RuntimeLoadError",
    "RuntimeMissingError",
    "TensorProtoError",
    "Tolerance",
    "VerifyReport",
    "compare_output",
    "encode_tensor",
    "is_bundle",
    "read_tensor",
    "verify_bundle",
]
