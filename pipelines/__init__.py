"""Ray pipelines for ray-vsr: data preparation and ingestion (Ray Data), training (Ray Train),
search (Ray Tune), tracking and registry (MLflow), evaluation and inference at scale."""
