"""Evaluation: scoring models on whole clips against bicubic with the benchmark conventions."""
