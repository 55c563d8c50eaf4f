"""Inference: the engine seam, its vLLM implementation, and engine lifecycle."""
