"""Data sources: KITTI IMU/GPS (from gtsam), CAN traffic from opendbc DBCs, fault injection, street scenes, bags."""
