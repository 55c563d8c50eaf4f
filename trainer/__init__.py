"""adapterd's trainer: the QLoRA SFT recipe, run as `python -m trainer` in its own process."""
