"""Time-series (CAN/IMU) anomaly detection core: signals, resampling, windows, normalisation, detectors."""
