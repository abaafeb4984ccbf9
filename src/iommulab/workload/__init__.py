"""Scenarios that drive the model and collect what its counters recorded."""
