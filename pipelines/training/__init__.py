"""Training on Ray Train: the experiment configs, the released recipes, the per-worker loop, the driver."""
