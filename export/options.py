"""The export choices, in one torch-free place: the API checks against them and the CLI lists them."""

EXPORTERS = ("torchscript", "dynamo")
DTYPES = ("float32", "float16")
COMPUTE = ("float16", "float32", "float64")
RUNTIMES = ("onnxruntime", "openvino", "tract")
