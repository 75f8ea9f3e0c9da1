"""Kedro settings for fedrs (defaults except where stated)."""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": {
        # one parameters file per pipeline; globals hold the seed and the scene name shared by all
        "parameters": ["parameters*", "parameters*/**", "**/parameters*"],
        "globals": ["globals.yml"],
    },
    # an environment's parameter files override single keys, not whole blocks
    "merge_strategy": {"parameters": "soft", "globals": "soft"},
}

from fedrs.hooks import ChampionHook  # noqa: E402

# kedro-mlflow's own hooks register through its plugin entry point; this one runs after them
HOOKS = (ChampionHook(),)
