"""InputPump over real rclpy/DDS: every message reaches its handler in order with its MessageInfo, the executor
spinning the same node never takes them, a failing handler does not stop the pump, and stop() cleans up."""

from __future__ import annotations

import threading

from rosutil import spin_until


def test_pump_takes_every_message_in_order_beside_a_spinning_executor(ros_node):
    import rclpy
    from rclpy.qos import QoSProfile
    from rclpy.serialization import deserialize_message
    from std_msgs.msg import String

    from flow_anomaly_ros.ros.can_conversion import can_message, frame_type
    from flow_anomaly_ros.ros.input_pump import InputPump, pump_available

    assert pump_available() is None, pump_available()
    frame_cls = frame_type()
    owner = rclpy.create_node("pump_owner", context=ros_node.context)
    ros_node.executor_for_test.add_node(owner)  # the executor spins the owner too, and must leave its input alone
    texts, frames, errors, rounds, infos = [], [], [], [0], []
    lock = threading.Lock()

    def on_text(msg, info):
        if msg.data == "boom":
            raise RuntimeError("handler failed")
        with lock:
            texts.append(msg.data)
            infos.append(info)

    def on_frame(raw, info):
        with lock:
            frames.append(deserialize_message(raw, frame_cls).id)

    def after_round():
        rounds[0] += 1

    pump = InputPump(owner, on_error=errors.append, after_round=after_round, name="test_pump")
    qos = QoSProfile(depth=1000)
    pump.subscribe(String, "pump_text", on_text, qos)
    pump.subscribe(frame_cls, "pump_can", on_frame, qos, raw=True)
    assert len(list(owner.subscriptions)) == 2  # ordinary subscriptions of the node (graph, remapping, QoS apply)
    pump.start()
    text_pub = ros_node.create_publisher(String, "pump_text", qos)
    can_pub = ros_node.create_publisher(frame_cls, "pump_can", qos)
    assert spin_until(ros_node, lambda: text_pub.get_subscription_count() and can_pub.get_subscription_count())
    try:
        for i in range(300):
            text_pub.publish(String(data="boom" if i == 150 else str(i)))
            can_pub.publish(can_message(frame_cls, 1.0 + i, i, b"\x01"))
        expected = [str(i) for i in range(300) if i != 150]
        assert spin_until(ros_node, lambda: len(texts) == len(expected) and len(frames) == 300, timeout=20.0)
        assert texts == expected and frames == list(range(300))  # in order, none taken by the executor
        assert len(errors) == 1 and "handler failed" in str(errors[0])  # reported, and the pump went on
        assert all(info["received_timestamp"] > 0 and info["publication_sequence_number"] > 0 for info in infos)
        assert rounds[0] >= 1 and pump.taken == 600
    finally:
        pump.stop()
    assert list(owner.subscriptions) == [] and pump._thread is None
    text_pub.publish(String(data="after stop"))
    spin_until(ros_node, lambda: False, timeout=0.5)
    assert "after stop" not in texts
    owner.destroy_node()


def test_on_drained_tells_a_backlogged_topic_from_a_drained_one(ros_node):
    import rclpy
    from rclpy.qos import QoSProfile
    from std_msgs.msg import String

    from flow_anomaly_ros.ros.input_pump import InputPump

    owner = rclpy.create_node("pump_backlog_owner", context=ros_node.context)
    gate = threading.Event()
    log: list[tuple[str, object]] = []
    lock = threading.Lock()

    def on_text(msg, info):
        with lock:
            log.append(("msg", int(msg.data)))

    def on_drained(backlogged):
        with lock:
            log.append(("drained", backlogged))

    # parked before each round until the test has published: the whole burst waits in the middleware
    pump = InputPump(owner, on_error=lambda exc: None, before_take=lambda: gate.wait(10.0), drain_max=4)
    qos = QoSProfile(depth=100)
    pump.subscribe(String, "pump_backlog", on_text, qos, on_drained=on_drained)
    pump.start()
    pub = ros_node.create_publisher(String, "pump_backlog", qos)
    assert spin_until(ros_node, lambda: pub.get_subscription_count() == 1)
    try:
        for i in range(10):
            pub.publish(String(data=str(i)))
        assert spin_until(ros_node, lambda: pub.wait_for_all_acked(rclpy.duration.Duration(seconds=0.1)), timeout=10)
        gate.set()
        assert spin_until(ros_node, lambda: sum(k == "msg" for k, _ in log) == 10, timeout=10.0)
        spin_until(ros_node, lambda: False, timeout=0.2)
        with lock:
            flags = [v for k, v in log if k == "drained"]
            order = [v for k, v in log if k == "msg"]
        assert order == list(range(10))
        # 4 + 4 taken with more waiting, then the last 2 and the topic is drained
        assert flags[:3] == [True, True, False], log
        first_false = log.index(("drained", False))
        assert [k for k, _ in log[:first_false]].count("msg") == 10  # reported after its messages, in order
    finally:
        pump.stop()
        owner.destroy_node()
