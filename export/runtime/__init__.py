"""Run and verify exported models with onnxruntime and numpy only: never imports torch or onnx.

from export.runtime import OnnxModel, verify_bundle
y = OnnxModel("mlp.onnx").run(x)
verify_bundle("mlp-bundle").ok                        # or runtime="openvino" / "tract" (optional extras)
"""

from export.options import RUNTIMES
from export.runtime.backends import RuntimeLoadError, RuntimeMissingError
from export.runtime.compare import OutputVerdict, compare_output
from export.runtime.model import InputError, ModelFileError, OnnxModel
from export.runtime.tensor_proto import TensorProtoError, encode_tensor, read_tensor
from export.runtime.verify import BundleError, BundleMismatchError, VerifyReport, is_bundle, verify_bundle

__all__ = [
    "RUNTIMES",
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
    "is_bundle",
    "read_tensor",
    "verify_bundle",
]
