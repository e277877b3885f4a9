"""DeepLabV3 with an extra anomaly class: model, score maps, losses, fine-tuning, data sets."""
