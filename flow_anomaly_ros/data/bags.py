"""rosbag2 read/write through the pure-Python ``rosbags`` library (no rosbag2_py, no rclpy).

Why: ``ros2 bag`` and ``rosbag2_py`` are not installable from PyPI, while ``rosbags`` reads and writes the same
rosbag2 layout (``metadata.yaml`` + ``.mcap`` or ``.db3``, format version 9). Messages stay as raw CDR bytes
everywhere: the player hands them to ``publisher.publish(bytes)``, the recorder writes what a raw subscription
received, and offline code decodes them with the rosbags typestore (``decode``) without importing rclpy.

Message definitions come from the Kilted typestore shipped with rosbags; types it does not know (``can_msgs/Frame``,
``flow_anomaly_ros/AnomalyScore`` ...) are read from the ``.msg`` files that rosidl installs under
``<prefix>/share/<package>/msg`` (or this repository's ``msg/``), so a bag we write carries the full definition and
type hash that ``ros2 bag info`` and Foxglove expect.

Example::

    from flow_anomaly_ros.data.bags import BagWriter, BagReader, bag_info, format_info
    with BagWriter("out_bag", storage="mcap") as w:
        w.add_topic("/imu", "sensor_msgs/msg/Imu")
        w.write_message("/imu", stamp_ns, w.new_message("sensor_msgs/msg/Imu", ...))
    print(format_info(bag_info("out_bag")))
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosbags.interfaces import (
    Connection,
    ConnectionExtRosbag2,
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

STORAGES: dict[str, StoragePlugin] = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
DEFAULT_STORAGE = "mcap"  # the rosbag2 default since Iron
_REPO = Path(__file__).resolve().parents[2]


def cdr_wire_bytes(data: bytes | memoryview) -> bytes:
    """CDR as DDS delivers it: zero-padded to a 4-byte multiple (what ``ros2 bag record`` stores).

    rclpy's ``serialize_message`` and rosbags return the unpadded length (e.g. 117 bytes for a NavSatFix); Fast DDS
    pads the payload to 4 bytes on the wire. Writing the padded form makes bag -> play -> record byte-identical.
    """
    data = bytes(data)
    return data + b"\x00" * (-len(data) % 4)


class BagError(RuntimeError):
    """A bag that cannot be opened, read or written; the message names the bag and the problem."""


# --------------------------------------------------------------------------------------------------------------
# Type store: Kilted definitions plus the .msg files of packages installed next to rclpy (can_msgs, ours).
# --------------------------------------------------------------------------------------------------------------


def _msg_search_dirs() -> list[Path]:
    prefixes = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(Path(sys.prefix))
    dirs = [p / "share" for p in prefixes]
    dirs.append(_REPO / "tools")  # tools/can_msgs/msg (the public can_msgs definition)
    return dirs


def _find_msg_file(msgtype: str) -> tuple[Path, Path | None] | None:
    """Locate ``<pkg>/msg/<Name>.msg`` (and its rosidl ``.json`` with the type hash, when installed)."""
    pkg, _, name = msgtype.split("/")
    for base in _msg_search_dirs():
        path = base / pkg / "msg" / f"{name}.msg"
        if path.is_file():
            js = path.with_suffix(".json")
            return path, js if js.is_file() else None
    if pkg == "flow_anomaly_ros" and (_REPO / "msg" / f"{name}.msg").is_file():
        return _REPO / "msg" / f"{name}.msg", None
    return None


def normalize_msgtype(msgtype: str) -> str:
    """``sensor_msgs/Imu`` or ``sensor_msgs/msg/Imu`` -> ``sensor_msgs/msg/Imu``."""
    parts = msgtype.strip().split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise BagError(f"malformed message type {msgtype!r}; expected 'package/msg/Name'")
    return "/".join(parts)


class TypeRegistry:
    """A rosbags typestore that learns missing message types from installed ``.msg`` files or from a bag."""

    def __init__(self) -> None:
        self.store: Typestore = get_typestore(Stores.ROS2_KILTED)
        self._hashes: dict[str, str] = {}

    def ensure(self, msgtype: str) -> str:
        """Make ``msgtype`` (and the types it uses) known; returns the normalised name."""
        msgtype = normalize_msgtype(msgtype)
        if msgtype in self.store.fielddefs:
            return msgtype
        found = _find_msg_file(msgtype)
        if found is None:
            raise BagError(
                f"no definition for message type {msgtype!r}: not in the ROS 2 Kilted type store and no "
                f"share/{msgtype.split('/')[0]}/msg/{msgtype.split('/')[2]}.msg under AMENT_PREFIX_PATH or {sys.prefix}"
            )
        msg_path, json_path = found
        types = get_types_from_msg(msg_path.read_text(), msgtype)
        for _, fields in types[msgtype][1]:
            self._ensure_field_types(fields)
        self.store.register(types)
        if json_path is not None:
            try:
                hashes = json.loads(json_path.read_text()).get("type_hashes", [])
                for entry in hashes:
                    self._hashes[entry["type_name"]] = entry["hash_string"]
            except (OSError, ValueError, KeyError, TypeError):
                pass  # fall back to the hash rosbags computes (same algorithm, REP 2011)
        return msgtype

    def _ensure_field_types(self, desc: Any) -> None:
        # A field descriptor is (kind, payload); nested message names appear as strings 'pkg/msg/Name'.
        if isinstance(desc, tuple):
            for item in desc:
                self._ensure_field_types(item)
        elif isinstance(desc, str) and desc.count("/") == 2 and desc not in self.store.fielddefs:
            self.ensure(desc)

    def register_from_connection(self, conn: Connection) -> None:
        """Teach the store a type from the definition stored in a bag (for types we have no ``.msg`` for)."""
        if conn.msgtype in self.store.fielddefs:
            return
        if conn.msgdef.data:
            try:
                self.store.register(get_types_from_msg(conn.msgdef.data, conn.msgtype))
                return
            except Exception:  # fall through to the installed definition
                pass
        self.ensure(conn.msgtype)

    def msgdef_and_hash(self, msgtype: str) -> tuple[str, str]:
        msgtype = self.ensure(msgtype)
        msgdef, _ = self.store.generate_msgdef(msgtype, ros_version=2)
        return msgdef, self._hashes.get(msgtype) or self.store.hash_rihs01(msgtype)

    def message_class(self, msgtype: str) -> Any:
        return self.store.types[self.ensure(msgtype)]

    def serialize(self, msg: object, msgtype: str) -> bytes:
        return bytes(self.store.serialize_cdr(msg, self.ensure(msgtype)))

    def deserialize(self, raw: bytes | memoryview, msgtype: str) -> Any:
        return self.store.deserialize_cdr(raw, self.ensure(msgtype))


_REGISTRY: TypeRegistry | None = None


def registry() -> TypeRegistry:
    """The process-wide type registry (building the Kilted store takes ~50 ms, so it is shared)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = TypeRegistry()
    return _REGISTRY


# --------------------------------------------------------------------------------------------------------------
# QoS as rosbag2 stores it (offered_qos_profiles), converted to and from plain dicts for the ROS side.
# --------------------------------------------------------------------------------------------------------------

_ZERO = QosTime(0, 0)
_INFINITE = QosTime(2147483647, 4294967295)


def make_qos(reliable: bool = True, transient_local: bool = False, depth: int = 10) -> Qos:
    """A rosbag2 QoS record (history keep-last ``depth``)."""
    return Qos(
        QosHistory.KEEP_LAST,
        depth,
        QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        _INFINITE,
        _INFINITE,
        QosLiveliness.AUTOMATIC,
        _INFINITE,
        False,
    )


def qos_summary(profiles: Sequence[Qos]) -> dict[str, Any] | None:
    """``{'reliable': bool, 'transient_local': bool, 'depth': int}`` when all profiles agree, else None."""
    if not profiles:
        return None
    kinds = {
        (p.reliability == QosReliability.RELIABLE, p.durability == QosDurability.TRANSIENT_LOCAL) for p in profiles
    }
    if len(kinds) != 1:
        return None
    reliable, transient = kinds.pop()
    return {"reliable": reliable, "transient_local": transient, "depth": max(1, max(int(p.depth) for p in profiles))}


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------


class BagWriter:
    """Writes a rosbag2 (MCAP by default, or SQLite3) from raw CDR bytes or rosbags message objects.

    Use as a context manager; on an exception the partly written bag is still closed (readable up to the failure).
    """

    def __init__(self, path: str | Path, storage: str = DEFAULT_STORAGE, types: TypeRegistry | None = None) -> None:
        if storage not in STORAGES:
            raise BagError(f"unknown storage {storage!r}; choose one of {', '.join(STORAGES)}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists already; rosbag2 never overwrites a bag (choose another OUT)")
        self.storage = storage
        self.types = types or registry()
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=STORAGES[storage])
        self._conns: dict[str, tuple[Connection, str]] = {}
        self.counts: dict[str, int] = {}
        self._open = False

    def __enter__(self) -> BagWriter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._writer.open()
        except WriterError as exc:
            raise BagError(str(exc)) from exc
        self._open = True

    def close(self) -> None:
        if self._open:
            self._writer.close()
            self._open = False

    def set_custom_data(self, key: str, value: str) -> None:
        """Store a string in metadata.yaml's ``custom_data`` (call before ``open``)."""
        self._writer.set_custom_data(key, value)

    def add_topic(self, topic: str, msgtype: str, qos: Sequence[Qos] | None = None) -> None:
        """Declare ``topic`` with ``msgtype`` and the QoS the publisher offered (default: reliable, depth 10)."""
        msgtype = normalize_msgtype(msgtype)
        if topic in self._conns:
            if self._conns[topic][1] != msgtype:
                raise BagError(f"topic {topic} already declared with type {self._conns[topic][1]}, not {msgtype}")
            return
        msgdef, digest = self.types.msgdef_and_hash(msgtype)
        conn = self._writer.add_connection(
            topic,
            msgtype,
            msgdef=msgdef,
            rihs01=digest,
            offered_qos_profiles=list(qos) if qos else [make_qos()],
        )
        self._conns[topic] = (conn, msgtype)
        self.counts[topic] = 0

    def write(self, topic: str, stamp_ns: int, cdr: bytes | memoryview) -> None:
        """Append raw CDR bytes received (or to be published) at ``stamp_ns`` on ``topic``."""
        if topic not in self._conns:
            raise BagError(f"topic {topic} was not declared with add_topic")
        self._writer.write(self._conns[topic][0], int(stamp_ns), cdr)
        self.counts[topic] += 1

    def write_message(self, topic: str, stamp_ns: int, msg: object) -> None:
        """Serialise a rosbags message object of the topic's type and append it (in its on-the-wire form)."""
        self.write(topic, stamp_ns, cdr_wire_bytes(self.types.serialize(msg, self._conns[topic][1])))

    def message_class(self, msgtype: str) -> Any:
        """The rosbags dataclass for ``msgtype`` (to build messages for ``write_message``)."""
        return self.types.message_class(msgtype)


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    stamp_ns: int  # the bag's record time (receive time for recorded bags, header stamp for generated ones)
    data: bytes  # CDR, exactly as stored


@dataclass
class TopicStats:
    name: str
    msgtype: str
    count: int
    serialization_format: str = "cdr"
    qos: list[Qos] = field(default_factory=list)


@dataclass
class BagInfo:
    path: Path
    storage: str
    files: list[Path]
    size_bytes: int
    start_ns: int
    end_ns: int
    message_count: int
    topics: list[TopicStats]
    compression: str | None
    ros_distro: str | None
    custom_data: dict[str, str]

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9


class BagReader:
    """Reads a rosbag2 directory (or a single ``.mcap`` / ``.db3`` file) as raw CDR messages in time order."""

    def __init__(self, path: str | Path, types: TypeRegistry | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"bag {self.path} does not exist")
        self.types = types or registry()
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except (ReaderError, ValueError, OSError) as exc:
            raise BagError(f"cannot open bag {self.path}: {exc}") from exc
        self.connections: list[Connection] = list(self._reader.connections)

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._reader.is_open:
            self._reader.close()

    @property
    def start_ns(self) -> int:
        return int(self._reader.start_time) if self._reader.message_count else 0

    @property
    def end_ns(self) -> int:
        return int(self._reader.end_time) if self._reader.message_count else 0

    def topics(self) -> dict[str, str]:
        """Topic name -> message type."""
        return {c.topic: c.msgtype for c in self.connections}

    def qos(self, topic: str) -> list[Qos]:
        out: list[Qos] = []
        for c in self.connections:
            if c.topic == topic and isinstance(c.ext, ConnectionExtRosbag2):
                out.extend(c.ext.offered_qos_profiles)
        return out

    def messages(
        self, topics: Iterable[str] | None = None, start_ns: int | None = None, stop_ns: int | None = None
    ) -> Iterator[BagMessage]:
        """Messages on ``topics`` (all when None) with ``start_ns <= stamp < stop_ns``, in record-time order."""
        wanted = set(topics) if topics is not None else None
        conns = [c for c in self.connections if wanted is None or c.topic in wanted]
        if wanted is not None and not conns:
            return
        try:
            for conn, stamp, raw in self._reader.messages(conns, start=start_ns, stop=stop_ns):
                yield BagMessage(conn.topic, conn.msgtype, int(stamp), bytes(raw))
        except (ReaderError, ValueError, KeyError) as exc:
            raise BagError(f"bag {self.path} is corrupt or truncated: {exc}") from exc

    def decode(self, msg: BagMessage) -> Any:
        """The message as a rosbags dataclass (numpy arrays for primitive arrays); no rclpy needed."""
        if msg.msgtype not in self.types.store.fielddefs:
            for c in self.connections:
                if c.msgtype == msg.msgtype:
                    self.types.register_from_connection(c)
                    break
        return self.types.deserialize(msg.data, msg.msgtype)


def _storage_of(path: Path) -> tuple[str, list[Path]]:
    if path.is_file():
        return ("mcap" if path.suffix == ".mcap" else "sqlite3"), [path]
    files = sorted(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
    storage = "mcap" if any(p.suffix == ".mcap" for p in files) else "sqlite3"
    return storage, files


def bag_info(path: str | Path) -> BagInfo:
    """What ``ros2 bag info`` shows: files, size, duration, start/end, message counts per topic with types."""
    path = Path(path)
    with BagReader(path) as bag:
        r = bag._reader
        topics = [
            TopicStats(
                name,
                info.msgtype or "(mixed)",
                int(info.msgcount),
                next(
                    (c.ext.serialization_format for c in info.connections if isinstance(c.ext, ConnectionExtRosbag2)),
                    "cdr",
                ),
                bag.qos(name),
            )
            for name, info in sorted(r.topics.items())
        ]
        storage, files = _storage_of(path)
        custom: dict[str, str] = {}
        meta = getattr(r.storage, "metadata", None)
        if meta is not None:
            custom = dict(getattr(meta, "custom_data", None) or {})
        return BagInfo(
            path=path,
            storage=storage,
            files=files,
            size_bytes=sum(f.stat().st_size for f in files),
            start_ns=bag.start_ns,
            end_ns=bag.end_ns,
            message_count=int(r.message_count),
            topics=topics,
            compression=r.compression_format or None,
            ros_distro=r.ros_distro,
            custom_data=custom,
        )


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"


def _fmt_time(ns: int) -> str:
    import datetime as _dt

    t = _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc)
    return f"{t.strftime('%b %d %Y %H:%M:%S.%f')[:-3]} UTC ({ns / 1e9:.9f})"


def format_info(info: BagInfo) -> str:
    """Text in the layout of ``ros2 bag info``."""
    lines = [
        f"Files:             {', '.join(f.name for f in info.files)}",
        f"Bag size:          {_human_size(info.size_bytes)}",
        f"Storage id:        {info.storage}",
        f"ROS Distro:        {info.ros_distro or 'unknown'}",
        f"Duration:          {info.duration_s:.9f}s",
        f"Start:             {_fmt_time(info.start_ns)}",
        f"End:               {_fmt_time(info.end_ns)}",
        f"Messages:          {info.message_count}",
        f"Compression:       {info.compression or ''}",
    ]
    width = max((len(t.name) for t in info.topics), default=0)
    for i, t in enumerate(info.topics):
        head = "Topic information: " if i == 0 else "                   "
        lines.append(
            f"{head}Topic: {t.name:<{width}} | Type: {t.msgtype} | Count: {t.count} | "
            f"Serialization Format: {t.serialization_format}"
        )
    if not info.topics:
        lines.append("Topic information: ")
    if info.custom_data:
        lines.append("Custom data:       " + ", ".join(f"{k}={v}" for k, v in sorted(info.custom_data.items())))
    return "\n".join(lines)
