"""Publisher process for test_messages_over_dds: sends AnomalyScore and ImageAnomaly at 20 Hz until stopped."""

import rclpy
from flow_anomaly_ros.msg import AnomalyScore, ImageAnomaly
from rclpy.executors import ExternalShutdownException
from sensor_msgs.msg import RegionOfInterest


def main() -> None:
    rclpy.init()
    node = rclpy.create_node("dds_test_publisher")
    pub_score = node.create_publisher(AnomalyScore, "test_score", 10)
    pub_image = node.create_publisher(ImageAnomaly, "test_image_anomaly", 10)
    count = [0]

    def tick() -> None:
        count[0] += 1
        score = AnomalyScore(source="realnvp@test", score=12.5, threshold=3.0, is_anomaly=True)
        score.header.stamp.sec = 1000 + count[0]
        score.header.frame_id = "base_link"
        score.feature_names = ["imu.accel_x", "can.speed"]
        score.feature_contributions = [0.25, 0.75]
        score.status = AnomalyScore.STALE_INPUT
        pub_score.publish(score)
        img = ImageAnomaly(anomaly_ratio=0.125, max_score=0.9, mean_score=0.1, threshold=0.5, is_anomaly=True)
        img.header.frame_id = "camera"
        img.regions = [RegionOfInterest(x_offset=10, y_offset=20, width=30, height=40)]
        img.region_scores = [0.9]
        img.latency_ms = 4.5
        img.backend = "onnxruntime-cpu"
        pub_image.publish(img)

    node.create_timer(0.05, tick)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
