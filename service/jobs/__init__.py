"""Jobs: the model (kinds, states, transitions), the runner that drives the trainer, the API."""
