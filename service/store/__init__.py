"""Durable state: the Store protocol and its SQLite implementation."""
