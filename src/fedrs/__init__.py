"""fedrs: federated multi-modal (HSI + LiDAR) land-cover classification."""

from fedrs.reproducible import enable_from_environment as _enable_reproducible

_enable_reproducible()  # FEDRS_REPRODUCIBLE=1: pin instruction sets before any torch operation

__version__ = "0.1.0"
