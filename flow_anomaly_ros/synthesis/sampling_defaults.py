"""Defaults of low-likelihood sampling, importable without torch (``flow-anomaly --help`` builds its parsers from
these and must not pay for importing torch and nflows)."""

SAMPLING_MODES = ("outside", "boundary", "any")
# Defaults: T = 1.5 leaves the inlier mode clearly; the 1 % / 10 % quantiles follow "outside" / "boundary" of §6.
DEFAULT_TEMPERATURE = 1.5
DEFAULT_LOW_QUANTILE = 0.01
DEFAULT_HIGH_QUANTILE = 0.10
