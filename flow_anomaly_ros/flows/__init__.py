"""Normalizing flows on nflows: RealNVP (time series) and MAF (image patches), training and scoring."""
