"""Project hooks: after a run that registered models, move each one's ``champion`` alias."""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)

REGISTERED_SUFFIX = ".mlflow_model"  # the catalog entries that register a model under their namespace


class ChampionHook:
    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        names = sorted(
            o.removesuffix(REGISTERED_SUFFIX) for o in pipeline.all_outputs() if o.endswith(REGISTERED_SUFFIX)
        )
        if not names:
            return
        from mlflow import MlflowClient

        from fedrs.registry import CHAMPION, promote_champion

        client = MlflowClient()
        for name in names:
            best = promote_champion(client, name)
            if best is not None:
                logger.info("Registered model %s: version %s is %s", name, best.version, CHAMPION)
