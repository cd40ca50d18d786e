"""Inference: the one model loader, streamed super-resolution of a video, many videos on Ray Data."""
