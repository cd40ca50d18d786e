"""Tuning: Ray Tune searches over training configs (search spaces, trials, ASHA, MLflow parent runs)."""
