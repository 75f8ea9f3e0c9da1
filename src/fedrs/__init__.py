"""fedrs: federated multi-modal (HSI + LiDAR) land-cover classification."""

__version__ = "0.1.0"
