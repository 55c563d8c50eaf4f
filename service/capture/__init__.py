"""Captured production traffic: tenants' capture policies, the one writer that redacts and
stores what they choose, feedback on it, exports of it as training data, and the online quality
and drift measured from it."""
