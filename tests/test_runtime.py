"""The torch-free runtime: the TensorProto codec, OnnxModel on real exports, and its import footprint."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from conftest import ROOT, umask
from onnx import TensorProto, helper, numpy_helper

import zoo
from export import to_onnx
from export.bundle import write_tensor
from export.runtime import InputError, ModelFileError, OnnxModel, TensorProtoError, read_tensor
from export.runtime.tensor_proto import decode_tensor, encode_tensor

DTYPES = ["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"]


@pytest.fixture(scope="module")
def mlp3(tmp_path_factory):
    """A 3-feature MLP and its ONNX export (float32, dynamic batch)."""
    model = zoo.create_model("mlp", in_features=3, out_features=2, hidden=[8], activation="tanh", seed=0)
    path = to_onnx(model, tmp_path_factory.mktemp("runtime") / "mlp3.onnx")
    return model, path


# -- TensorProto codec ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3), (0, 4), (), (5,)])
def test_encoding_matches_onnx_byte_for_byte_and_round_trips(dtype, shape):
    array = (np.random.default_rng(0).standard_normal(shape) * 100).astype(dtype)
    ours = encode_tensor(array, name="input")
    assert ours == numpy_helper.from_array(array, name="input").SerializeToString()
    name, back = decode_tensor(ours)
    assert name == "input" and back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_special_float_values_survive_bit_for_bit(tmp_path):
    values = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -3.4e38], dtype=np.float32)
    path = write_tensor(tmp_path / "x.pb", values.reshape(7, 1), name="x")
    back = read_tensor(path).array
    assert back.view(np.uint32).tolist() == values.reshape(7, 1).view(np.uint32).tolist()
    assert os.listdir(tmp_path) == ["x.pb"]  # no temp file left
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask()


@pytest.mark.parametrize(
    ("data_type", "values", "expected"),
    [
        (TensorProto.FLOAT, [1.5, -2.0, float("inf")], np.array([1.5, -2.0, np.inf], dtype=np.float32)),
        (TensorProto.DOUBLE, [1e300, -1.0, 0.0], np.array([1e300, -1.0, 0.0])),
        (TensorProto.INT64, [-5, 3, 2**40], np.array([-5, 3, 2**40], dtype=np.int64)),
        (TensorProto.INT32, [-7, 8, 9], np.array([-7, 8, 9], dtype=np.int32)),
        (TensorProto.FLOAT16, [1.5, -2.0, 65504.0], np.array([1.5, -2.0, 65504.0], dtype=np.float16)),
        (TensorProto.BOOL, [1, 0, 1], np.array([True, False, True])),
    ],
)
def test_decodes_typed_fields_other_writers_use(data_type, values, expected):
    tensor = helper.make_tensor("t", data_type, [3], values)
    assert not tensor.raw_data
    name, array = decode_tensor(tensor.SerializeToString())
    assert name == "t" and array.dtype == expected.dtype
    np.testing.assert_array_equal(array, expected)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (numpy_helper.from_array(np.ones(4, np.float32)).SerializeToString()[:-3], "truncated"),
        (b"hello, not a tensor", "wire type"),
        (numpy_helper.from_array(np.array(["a"], dtype=object)).SerializeToString(), "data_type 8"),
        (
            helper.make_tensor("t", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0]).SerializeToString()[:-4],
            "truncated",
        ),
    ],
)
def test_bad_tensor_bytes_raise_tensor_proto_error(data, fragment):
    with pytest.raises(TensorProtoError, match=fragment):
        decode_tensor(data)


def test_read_tensor_names_the_file(tmp_path):
    (tmp_path / "bad.pb").write_bytes(b"\x08")
    with pytest.raises(TensorProtoError, match="bad.pb"):
        read_tensor(tmp_path / "bad.pb")
    with pytest.raises(TensorProtoError, match="cannot read tensor file"):
        read_tensor(tmp_path / "missing.pb")


# -- OnnxModel ------------------------------------------------------------------------------------
def test_run_matches_torch_and_describes_the_model(mlp3):
    model, path = mlp3
    runtime = OnnxModel(path, threads=1)
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runtime.run(x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runtime.run(x.tolist()), expected, rtol=1e-5, atol=1e-6)  # nested lists
    assert runtime.run(x[:1]).shape == (1, 2)  # the batch axis is dynamic
    assert (runtime.input_name, runtime.input_shape, runtime.output_names) == (
        "input",
        ("batch", 3),
        ["output"],
    )
    assert runtime.dtype == np.float32 and runtime.opset == 17
    assert runtime.metadata["zoo.config"] == model.zoo_config  # JSON metadata comes back parsed
    assert runtime.metadata["zoo.opset"] == "17"


def test_run_gives_what_onnxruntime_gives_for_any_memory_layout(mlp3):
    """run() skips InferenceSession.run's per-call checks; the numbers must not change."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(mlp3[1]), providers=["CPUExecutionProvider"])
    runtime = OnnxModel(mlp3[1])
    base = np.random.default_rng(2).standard_normal((6, 6)).astype(np.float32)
    for x in (base[:, :3], base[::2, ::2], np.asfortranarray(base[:, 3:]), base[:1, :3].copy()):
        expected = session.run(None, {"input": np.ascontiguousarray(x)})[0]
        np.testing.assert_array_equal(runtime.run(x), expected)
        np.testing.assert_array_equal(runtime.run_all(x)["output"], expected)


@pytest.mark.parametrize(
    ("x", "fragment"),
    [
        ([1.0, 2.0, 3.0], "expected input of shape (batch, 3) float32, got (3,)"),
        (np.zeros((4, 2), np.float32), "expected input of shape (batch, 3) float32, got (4, 2)"),
        (np.zeros((1, 1, 3), np.float32), "got (1, 1, 3)"),
        ([["a", "b", "c"]], "got values of dtype <U1"),
        (np.ones((2, 3), np.complex64), "got values of dtype complex64"),
        ([[1.0, 2.0], [3.0]], "ragged or non-numeric"),
        ([[1e39, 0.0, 0.0]], "input value 1e+39 overflows float32"),
    ],
)
def test_inputs_that_do_not_fit_raise_input_error_stating_the_expected_shape(mlp3, x, fragment):
    with pytest.raises(InputError) as caught:
        OnnxModel(mlp3[1]).run(x)
    assert fragment in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_integers_and_float64_are_cast_to_the_model_dtype(mlp3):
    runtime = OnnxModel(mlp3[1])
    as_float = runtime.run(np.array([[1.0, 2.0, 3.0]], np.float32))
    np.testing.assert_array_equal(runtime.run(np.array([[1, 2, 3]])), as_float)
    np.testing.assert_array_equal(runtime.run(np.array([[1.0, 2.0, 3.0]])), as_float)


def test_float16_model_takes_float16(tmp_path):
    model = zoo.create_model("mlp", in_features=2, hidden=[4], activation="tanh", seed=0)
    runtime = OnnxModel(to_onnx(model, tmp_path / "half.onnx", dtype="float16"))
    assert runtime.dtype == np.float16
    assert runtime.run([[0.5, -0.5]]).dtype == np.float16
    with pytest.raises(InputError, match="overflows float16"):
        runtime.run([[1e5, 0.0]])


def test_static_batch_is_enforced(tmp_path):
    model = zoo.create_model("mlp", in_features=2, hidden=[4], activation="tanh", seed=0)
    runtime = OnnxModel(to_onnx(model, tmp_path / "static.onnx", dynamic_batch=False))
    batch = runtime.input_shape[0]
    assert isinstance(batch, int)
    assert runtime.run(np.zeros((batch, 2))).shape == (batch, 1)
    with pytest.raises(
        InputError, match=rf"expected input of shape \({batch}, 2\) float32, got \({batch + 1}, 2\)"
    ):
        runtime.run(np.zeros((batch + 1, 2)))


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """A small transformer over one-hot tokens of 10 kinds, any length, and its ONNX export."""
    model = zoo.create_model("transformer", width=8, depth=1, heads=2, seed=0)
    return model, OnnxModel(to_onnx(model, tmp_path_factory.mktemp("tokens") / "seq.onnx"))


@pytest.mark.parametrize("length", [5, 11])  # other lengths than the example the export traced (3)
def test_token_ids_are_one_hot_encoded_for_a_model_of_one_hot_tokens(tokens, length):
    model, runtime = tokens
    assert (runtime.input_shape, runtime.vocabulary) == (("batch", "sequence", 10), 10)
    ids = np.random.default_rng(length).integers(0, 10, (3, length))
    one_hot = np.eye(10, dtype=np.float32)[ids]
    np.testing.assert_array_equal(runtime.run(ids), runtime.run(one_hot))
    np.testing.assert_array_equal(runtime.run(ids.astype(np.uint8).tolist()), runtime.run(one_hot))
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(ids)).numpy()  # torch's model takes the ids as they are
    np.testing.assert_allclose(runtime.run(ids), expected, rtol=1e-5, atol=1e-5)


def test_unknown_token_ids_raise_input_error(tokens):
    runtime = tokens[1]
    for bad in (10, -1):
        with pytest.raises(InputError, match=rf"token id {bad} is not one of the model's 10 tokens \(0 to 9\); "
                                             r"it takes token ids \(N, L\) or one-hot rows \(batch, sequence, 10\)"):
            runtime.run([[0, 1, bad]])
    with pytest.raises(InputError, match=r"got \(2, 3, 4\)"):
        runtime.run(np.zeros((2, 3, 4), np.int64))  # ids take one axis fewer than the one-hot rows


def test_only_models_of_one_hot_tokens_take_ids(mlp3, tmp_path):
    signals = OnnxModel(to_onnx(zoo.create_model("cnn1d", widths=[4], seed=0), tmp_path / "signals.onnx"))
    assert signals.input_shape == ("batch", 1, 40) and signals.vocabulary is None  # a fixed length: not tokens
    with pytest.raises(InputError, match=r"expected input of shape \(batch, 1, 40\) float32, got \(2, 1\)"):
        signals.run(np.zeros((2, 1), np.int64))
    assert OnnxModel(mlp3[1]).vocabulary is None


def test_the_task_and_class_names_come_from_the_metadata(tokens, mlp3, tmp_path):
    assert (tokens[1].task, tokens[1].labels) == ("sequence_classification", None)  # untrained: no dataset
    assert (OnnxModel(mlp3[1]).task, OnnxModel(mlp3[1]).labels) == (None, None)  # an mlp is for any task
    model = zoo.create_model("cnn", input_shape=[1, 12, 12], widths=[4], seed=0)
    zoo.train(model, zoo.datasets.create("shapes", seed=0, n=8, n_test=0, size=12), epochs=1, progress=False)
    runtime = OnnxModel(to_onnx(model, tmp_path / "cnn.onnx"))
    assert (runtime.task, runtime.labels) == ("classification", ["circle", "square", "triangle", "cross"])


def _model_file_cases(exported: bytes) -> list[tuple[str, bytes | None, str]]:
    return [
        ("missing.onnx", None, "no such ONNX model file"),
        ("empty.onnx", b"", "is empty"),
        ("truncated.onnx", exported[: len(exported) // 2], "truncated or not an ONNX model"),
        ("text.onnx", b"this is not a model\n", "truncated or not an ONNX model"),
        (
            "tensor.onnx",
            numpy_helper.from_array(np.ones(3, np.float32)).SerializeToString(),
            "not a valid ONNX",
        ),
    ]


def test_bad_model_files_raise_one_line_model_file_errors(mlp3, tmp_path):
    for name, data, fragment in _model_file_cases(mlp3[1].read_bytes()):
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelFileError) as caught:
            OnnxModel(tmp_path / name)
        message = str(caught.value)
        assert fragment in message and name in message and "\n" not in message, message
    with pytest.raises(ModelFileError, match="is a directory"):
        OnnxModel(tmp_path)


def test_multi_input_models_are_refused(tmp_path):
    a, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "ab")
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "add", [a, b], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, tmp_path / "add.onnx")
    with pytest.raises(ModelFileError, match="has 2 inputs"):
        OnnxModel(tmp_path / "add.onnx")


def test_bad_threads_and_providers_are_value_errors(mlp3):
    with pytest.raises(ValueError, match="threads"):
        OnnxModel(mlp3[1], threads=0)
    with pytest.raises(ValueError, match="not available"):
        OnnxModel(mlp3[1], providers=["NoSuchExecutionProvider"])


# -- import footprint -----------------------------------------------------------------------------
def test_the_runtime_imports_neither_torch_nor_onnx():
    code = (
        "import sys, export.runtime, export.runtime.verify\n"
        "heavy = sorted(m for m in ('torch', 'onnx', 'zoo') if m in sys.modules)\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "", f"export.runtime imported {result.stdout.strip()}"
