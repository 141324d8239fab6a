"""The `sharedft-fx` command line: a thin layer over the Python API.

Every subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args) -> int``.
Errors print one line (``--debug`` shows the traceback) and exit non-zero; exit codes:

====  ===============================================================
0     success
1     an unexpected error (a bug: please report it with --debug output)
2     bad configuration or command-line value
3     bad input: model, example inputs, data, or a file
4     the model could not be traced
5     a graph pass failed
6     a verification failed (rewrite, export or ONNX Runtime check)
7     the parameter budget cannot be reached
8     the ONNX export failed (exporter error, or the file would store a tensor twice)
130   interrupted
====  ===============================================================
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import traceback
from typing import Sequence

from ..errors import SharedftError

__all__ = ["main", "COMMANDS"]

# subcommand name -> module (relative to this package) defining add_parser() and run()
COMMANDS: dict[str, str] = {
    "transform": ".transform_cmd",
    "report": ".report_cmd",
    "diff": ".diff_cmd",
    "finetune": ".finetune_cmd",
    "demo": ".demo_cmd",
    "export": ".export_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="sharedft-fx",
        description="Share convolution weights of a PyTorch model: smaller, same speed.",
    )
    parser.add_argument("--version", action="version", version=f"sharedft-fx {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="show progress logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name, __name__)
        sub_parser = module.add_parser(sub)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else (logging.INFO if args.verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    previous = _terminate_as_interrupt()
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("sharedft-fx: interrupted", file=sys.stderr)
        return 130
    except SharedftError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"sharedft-fx: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback, unless --debug
        if args.debug:
            traceback.print_exc()
        print(
            f"sharedft-fx: internal error: {type(exc).__name__}: {exc} (rerun with --debug and "
            "report it)",
            file=sys.stderr,
        )
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate_as_interrupt() -> object:
    """SIGTERM raises KeyboardInterrupt, so `finally` blocks remove temporary files.

    (A fine-tune installs its own handler that writes a checkpoint first.)
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
