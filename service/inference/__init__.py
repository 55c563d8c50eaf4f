"""Inference: the engine seam, its vLLM implementation, engine lifecycle, and generation."""
