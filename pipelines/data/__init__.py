"""Data: sources, degradations, the stored format (schema, manifest), preparation and training ingestion."""
