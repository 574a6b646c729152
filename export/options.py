"""The export choices, in one torch-free place: the API checks against them and the CLI lists them."""

EXPORTERS = ("torchscript", "dynamo")
DTYPES = ("float32", "float16")
COMPUTE = ("float16", "float32", "float64")
# export.runtime.backends.RUNTIMES, repeated so that `zoo --help` loads no numpy (a test keeps them equal).
RUNTIMES = ("onnxruntime", "openvino", "tract")
TRACE_BATCH = 2  # rows of the example input traced: the fixed batch of a graph exported without a dynamic batch
