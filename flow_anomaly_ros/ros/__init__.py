"""Thin ROS 2 adapters: message conversion, nodes, bag tools and the in-process runner.

Everything here imports rclpy; nothing in the rest of the package does.
"""
