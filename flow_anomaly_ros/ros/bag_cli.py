"""``flow-anomaly bag play|record|info``: the ``ros2 bag`` verbs for machines without rosbag2 (PyPI installs).

Options mirror ``ros2 bag`` where they make sense (``--rate``, ``--clock [HZ]``, ``--topics``, ``--loop``,
``--start-offset``, ``--remap from:=to``, ``--storage``, ``--all``, ``--exclude``, ``--duration``), so the same
commands work on a vehicle with ``ros2 bag``. Extra: ``play --wait-for-subscribers N`` holds playback until every
played topic has N subscribers (no lost head of the bag when nodes start at the same time).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from flow_anomaly_ros.cli import UserError
from flow_anomaly_ros.data.bags import DEFAULT_STORAGE, STORAGES, BagError, bag_info, format_info


def _parse_remaps(items: list[str]) -> dict[str, str]:
    remap: dict[str, str] = {}
    for item in items:
        if ":=" not in item:
            raise UserError(f"--remap takes from:=to, got {item!r}")
        src, dst = item.split(":=", 1)
        remap[src] = dst
    return remap


def _parse_topic_types(items: list[str]) -> tuple[list[str], dict[str, str]]:
    topics: list[str] = []
    types: dict[str, str] = {}
    for item in items:
        if ":=" in item:
            topic, msgtype = item.split(":=", 1)
            types[topic] = msgtype
            topics.append(topic)
        else:
            topics.append(item)
    return topics, types


def _ros_context():
    import rclpy

    rclpy.init(args=["--ros-args"])
    return rclpy


def _cmd_info(args: argparse.Namespace) -> int:
    try:
        print(format_info(bag_info(args.bag)))
    except BagError as exc:
        raise UserError(str(exc)) from exc
    return 0


def _cmd_play(args: argparse.Namespace) -> int:
    rclpy = _ros_context()
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from flow_anomaly_ros.ros.bag_player import BagPlayer

    node = rclpy.create_node("rosbag2_player", parameter_overrides=[])
    if args.clock is not None:
        node.set_parameters([Parameter("use_sim_time", value=False)])
    try:
        player = BagPlayer(
            node,
            args.bag,
            rate=args.rate,
            topics=args.topics or None,
            clock_hz=args.clock or 0.0,
            loop=args.loop,
            start_offset_s=args.start_offset,
            remap=_parse_remaps(args.remap),
            wait_for_subscribers=args.wait_for_subscribers,
        )
    except BagError as exc:
        node.destroy_node()
        rclpy.try_shutdown()
        raise UserError(str(exc)) from exc
    executor = SingleThreadedExecutor()
    executor.add_node(node)  # services graph requests while the main thread publishes
    import threading

    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    signal.signal(signal.SIGTERM, lambda *_: player.stop())
    try:
        if args.delay > 0:
            time.sleep(args.delay)
        stats = player.play()
    except KeyboardInterrupt:
        player.stop()
        stats = player.stats
    player.wait_for_all_acked(args.wait_for_all_acked)
    print(
        f"played {stats.total} messages in {stats.wall_s:.2f} s ({stats.loops} loops), "
        f"{sum(stats.failed.values())} publish failures, worst lag {stats.max_lag_ms:.1f} ms",
        file=sys.stderr,
    )
    player.close()
    # The spin thread must have left the executor before the node and the context go: a daemon thread still inside
    # rclpy's wait when the interpreter exits aborts the process ("terminate called without an active exception").
    executor.shutdown()
    spin.join(timeout=5.0)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    topics, types = _parse_topic_types(list(args.topics))
    if not topics and not args.all:
        raise UserError("give --topics to record, or --all")
    rclpy = _ros_context()
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from flow_anomaly_ros.ros.bag_recorder import BagRecorder

    node = rclpy.create_node("rosbag2_recorder")
    if args.use_sim_time:
        node.set_parameters([Parameter("use_sim_time", value=True)])
    try:
        recorder = BagRecorder(
            node,
            args.output,
            topics=topics,
            all_topics=args.all,
            storage=args.storage,
            types=types,
            exclude=args.exclude,
        )
    except BagError as exc:
        node.destroy_node()
        rclpy.try_shutdown()
        raise UserError(str(exc)) from exc
    stop = {"flag": False}

    def _stop(*_: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    t0 = time.monotonic()
    print(f"recording to {args.output} ({args.storage}); Ctrl-C to stop", file=sys.stderr, flush=True)
    while not stop["flag"] and (args.duration <= 0 or time.monotonic() - t0 < args.duration):
        executor.spin_once(timeout_sec=0.05)
    recorder.close()
    print(f"recorded {recorder.total} messages: {recorder.counts}", file=sys.stderr, flush=True)
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    bag = subparsers.add_parser(name, help=help_text, description=__doc__.split("\n\n")[0])
    verbs = bag.add_subparsers(dest="bag_command", metavar="VERB")
    verbs.required = True

    info = verbs.add_parser("info", help="print bag metadata like `ros2 bag info`")
    info.add_argument("bag", help="bag directory, or a single .mcap / .db3 file")
    info.set_defaults(func=_cmd_info)

    play = verbs.add_parser("play", help="publish a bag with its recorded timing like `ros2 bag play`")
    play.add_argument("bag", help="bag directory, or a single .mcap / .db3 file")
    play.add_argument("-r", "--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    play.add_argument(
        "--clock",
        type=float,
        nargs="?",
        const=40.0,
        default=None,
        metavar="HZ",
        help="publish /clock with the bag time at HZ (default 40 Hz) for nodes with use_sim_time:=true",
    )
    play.add_argument("--topics", nargs="+", default=[], metavar="TOPIC", help="play only these topics")
    play.add_argument("-l", "--loop", action="store_true", help="repeat the bag until interrupted")
    play.add_argument(
        "--start-offset", "--start", type=float, default=0.0, metavar="S", help="skip the first S seconds of the bag"
    )
    play.add_argument("--delay", type=float, default=0.0, metavar="S", help="sleep S seconds before playing")
    play.add_argument(
        "-m", "--remap", nargs="+", default=[], metavar="FROM:=TO", help="publish topic FROM under the name TO"
    )
    play.add_argument(
        "--wait-for-subscribers",
        type=int,
        default=0,
        metavar="N",
        help="(not in ros2 bag) wait up to 10 s until every played topic has N subscribers",
    )
    play.add_argument(
        "--wait-for-all-acked",
        type=float,
        default=2.0,
        metavar="S",
        help="before exiting, wait up to S seconds for reliable subscribers to acknowledge everything",
    )
    play.set_defaults(func=_cmd_play)

    rec = verbs.add_parser("record", help="record topics into a new bag like `ros2 bag record`")
    rec.add_argument("output", metavar="OUT", help="bag directory to create (must not exist; ros2 bag: -o OUT)")
    rec.add_argument(
        "--topics",
        nargs="+",
        default=[],
        metavar="TOPIC",
        help="topics to record; TOPIC:=pkg/msg/Type records before a publisher exists",
    )
    rec.add_argument("-a", "--all", action="store_true", help="record every topic in the graph (not /rosout ...)")
    rec.add_argument("-x", "--exclude", nargs="+", default=[], metavar="TOPIC", help="topics never to record")
    rec.add_argument(
        "-s", "--storage", choices=sorted(STORAGES), default=DEFAULT_STORAGE, help="storage plugin (default mcap)"
    )
    rec.add_argument("-d", "--duration", type=float, default=0.0, metavar="S", help="stop after S seconds")
    rec.add_argument("--use-sim-time", action="store_true", help="stamp messages with /clock time")
    rec.set_defaults(func=_cmd_record)
