"""Adapters: the registry, the checks an adapter must pass, and their management in the engine."""
