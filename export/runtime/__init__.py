"""Run and verify exported models with onnxruntime and numpy only: never imports torch or onnx.

from export.runtime import OnnxModel, verify_bundle
y = OnnxModel("mlp.onnx").run(x)
verify_bundle("mlp-bundle").ok                        # or runtime="openvino" / "tract" (optional extras)
                                                      # BundleDamagedError first if any file differs
"""

from export.options import RUNTIMES

from .backends import RuntimeLoadError, RuntimeMissingError
from .compare import OutputVerdict, compare_output
from .model import InputError, ModelFileError, OnnxModel
from .tensor_proto import TensorProtoError, encode_tensor, read_tensor
from .verify import BundleDamagedError, BundleError, BundleMismatchError, VerifyReport, verify_bundle

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
    "VerifyReport",
    "compare_output",
    "encode_tensor",
    "read_tensor",
    "verify_bundle",
]
