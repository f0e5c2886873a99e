"""MIMFlow model, losses, data, trainer and checkpoint format.

This package knows nothing about analyses; ``mimflow_lab`` reads checkpoints
through :func:`mimflow_lab.load_model`.
"""
