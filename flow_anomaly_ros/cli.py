"""``flow-anomaly``: one command for every offline job, with a subcommand group per area.

Each group lives next to the code it drives and exposes ``register(subparsers)``; this module only wires them
together, imports lazily (``flow-anomaly --help`` must not import torch), and turns known errors into a clear
message and a non-zero exit code instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (command, module exposing register(subparsers), one-line help)
GROUPS: tuple[tuple[str, str, str], ...] = (
    ("ts", "flow_anomaly_ros.timeseries.cli", "time-series (CAN/IMU) data set, training and evaluation"),
    ("seg", "flow_anomaly_ros.segmentation.cli", "segmentation model: fine-tune, export, build engine, evaluate"),
    ("maf", "flow_anomaly_ros.synthesis.cli", "MAF patch flow: train, sample low-likelihood patches, paste"),
    ("bag", "flow_anomaly_ros.ros.bag_cli", "rosbag2 play / record / info (MCAP and SQLite3, via rosbags)"),
    ("demo", "flow_anomaly_ros.demo.cli", "demo recording and the end-to-end demo job"),
    ("evaluate", "flow_anomaly_ros.demo.evaluate_cli", "evaluate the nodes' core on a bag (offline or --live)"),
    ("fleet", "flow_anomaly_ros.fleet.cli", "evaluate many bags in parallel on Ray (local or a cluster), one report"),
    ("up", "flow_anomaly_ros.ros.runner", "run the nodes in one process (for machines without ros2 launch)"),
)


class UserError(RuntimeError):
    """An error caused by the user's input; printed without a traceback."""


def size_arg(text: str) -> tuple[int, int]:
    """argparse ``type=`` for ``HEIGHTxWIDTH`` sizes (``128x256`` -> ``(128, 256)``), shared by every group."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 128x256, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flow-anomaly",
        description="Offline jobs of flow_anomaly_ros: data sets, training, export, bags, evaluation and the demo.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module, help_text in GROUPS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise
            continue
        mod.register(sub, name, help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from flow_anomaly_ros.model_store import ModelFileError

    try:
        result = args.func(args)
    except (UserError, ModelFileError, FileNotFoundError) as exc:
        print(f"flow-anomaly {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: sub-commands raise flow_anomaly_ros.cli.UserError,
    # which is a different class from this module's UserError under ``python -m`` (a traceback instead of a message).
    from flow_anomaly_ros.cli import main as _main

    sys.exit(_main())
