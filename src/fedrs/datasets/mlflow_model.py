"""The MLflow model each evaluation registers, with its requirements stated instead of inferred."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from kedro_mlflow.io.models import MlflowModelTrackingDataset

# what loading the pickled torch module needs: MLflow's pytorch flavour and its pickler, torch, and
# the package that defines the module's classes (the same list MLflow's inference finds)
REQUIREMENTS = ("mlflow", "cloudpickle", "fedrs", "numpy", "pandas", "torch")


def pinned_requirements(names: tuple[str, ...] = REQUIREMENTS) -> list[str]:
    """``name==version`` of each installed distribution, without a local label (``+cpu``) pip
    could not resolve on another machine."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in names]


class RegisteredModelDataset(MlflowModelTrackingDataset):
    """``MlflowModelTrackingDataset`` with ``pip_requirements`` set to the installed versions of
    ``REQUIREMENTS`` (a ``save_args`` entry still wins). Why: without them MLflow infers the
    requirements by loading the model again in a subprocess — 4.7 s per model and run on 2 cores,
    against 0.05 s stated (measured); every pipeline registers one model per algorithm."""

    def __init__(self, flavor: str, pyfunc_workflow: str | None = None, load_args: dict[str, Any] | None = None,
                 save_args: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(flavor, pyfunc_workflow, load_args,
                         {"pip_requirements": pinned_requirements(), **(save_args or {})}, metadata)
