"""The end-to-end demo: demo recording, evaluation of a bag, HTML report."""
