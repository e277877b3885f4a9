"""Metrics, reports and plots shared by the time-series and segmentation evaluations."""
