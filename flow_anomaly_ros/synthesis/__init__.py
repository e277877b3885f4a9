"""Synthetic anomaly patches from a Masked Autoregressive Flow, and pasting them into inlier images."""
