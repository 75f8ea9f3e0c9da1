"""Torch modules only: nothing here knows Kedro or Flower."""
