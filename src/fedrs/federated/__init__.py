"""The federated side: local updates and aggregation as plain functions, and the Flower apps
that only move their messages."""
