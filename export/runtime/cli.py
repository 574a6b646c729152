"""``zoo-onnx-runtime verify|predict``, also ``python -m zoo_onnx_runtime``: zoo's bundles without torch or click.

The command of the torch-free distribution zoo-onnx-runtime. It shares ``.commands`` with ``zoo verify``
and ``zoo predict``, so it prints the same lines and fails with the same one-line errors and exit
statuses (1 for a failure, 2 for a usage error).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from .backends import DISTRIBUTION, RUNTIMES
from .commands import ERRORS, UsageError, predict, verify

PROG = "zoo-onnx-runtime"
PREDICT_USAGE = f"{PROG} predict [-h] [--input X] [-o OUTPUT] [--json] MODEL [VALUES ...]"


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line on stderr, as every zoo command's are."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see '{self.prog} --help')", 2)


def parser() -> argparse.ArgumentParser:
    """The command line: ``verify BUNDLE`` and ``predict MODEL``, with the options of their zoo twins."""
    top = _Parser(prog=PROG, allow_abbrev=False, description="Verify and run zoo's ONNX bundles with "
                  "onnxruntime and numpy alone: the same checks as `zoo verify` and `zoo predict`, without torch.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "verify", allow_abbrev=False, help="Re-check a bundle from `zoo export --test-data` in one runtime.",
        description="Re-check BUNDLE (a directory from `zoo export --test-data`, or its model.onnx): check the "
        "manifest and the model's sha256, then replay every probe of the export-time parity check. Exit "
        "status 1 on any failure.",
    )
    check.add_argument("bundle", metavar="BUNDLE", type=pathlib.Path)
    check.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                       help=f"the runtime to replay the bundle in (default: onnxruntime; openvino and tract are "
                       f"optional extras: pip install '{DISTRIBUTION}[openvino]')")
    check.add_argument("--json", dest="as_json", action="store_true", help="print the report as JSON on stdout")
    run = commands.add_parser(
        "predict", allow_abbrev=False, usage=PREDICT_USAGE, help="Run an .onnx model or a bundle on some input.",
        description="Run MODEL (an .onnx file or a bundle) on --input x.npy or on VALUES: with a model of F "
        "input features, N*F values make N rows of F. Negative numbers, nan and inf may be given as they are. "
        "A classifier prints the class of each input (a sequence classifier: of each position).",
    )
    run.add_argument("model", metavar="MODEL", type=pathlib.Path)
    run.add_argument("--input", dest="input_path", metavar="X", type=pathlib.Path,
                     help="a .npy file (or a TensorProto .pb) holding the input batch: rows, images, signals, or "
                     "token ids (N, L) for a model of one-hot tokens")
    run.add_argument("-o", "--output", type=pathlib.Path,
                     help="write the output to this .npy file (.npz: every output by name) instead of printing it")
    run.add_argument("--json", dest="as_json", action="store_true",
                     help="print JSON (NaN/inf as the strings 'nan', 'inf', '-inf')")
    return top


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``zoo-onnx-runtime`` script: errors become one line on stderr and a non-zero exit."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        parser().print_help()
        sys.exit(0)
    # VALUES come back unparsed: argparse would take -inf or -1e5 for options.
    args, rest = parser().parse_known_args(argv)
    try:
        if args.command == "predict":
            predict(args.model, _floats(rest), input_path=args.input_path, output=args.output, as_json=args.as_json)
        elif rest:
            raise UsageError(f"unrecognized arguments: {' '.join(rest)}")
        else:
            verify(args.bundle, runtime=args.runtime, as_json=args.as_json)
    except UsageError as exc:
        _fail(f"{exc} (see '{PROG} {args.command} --help')", 2)
    except ERRORS as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    sys.exit(0)


def _floats(tokens: Sequence[str]) -> list[float]:
    """The VALUES of ``predict``, in the order given."""
    values = []
    for token in tokens:
        try:
            values.append(float(token))
        except ValueError:
            raise UsageError(f"invalid value for VALUES: {token!r} is not a valid float") from None
    return values


def _fail(message: str, status: int) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(status)
