"""Run and verify exported models with onnxruntime and numpy only: never imports torch or onnx.

from export.runtime import OnnxModel, verify_bundle
y = OnnxModel("mlp.onnx").run(x)
verify_bundle("mlp-bundle").ok
"""

from export.runtime.model import InputError, ModelFileError, OnnxModel
from export.runtime.tensor_proto import TensorProtoError, encode_tensor, read_tensor
from export.runtime.verify import BundleError, BundleMismatchError, VerifyReport, verify_bundle

__all__ = [
    "BundleError",
    "BundleMismatchError",
    "InputError",
    "ModelFileError",
    "OnnxModel",
    "TensorProtoError",
    "VerifyReport",
    "encode_tensor",
    "read_tensor",
    "verify_bundle",
]
