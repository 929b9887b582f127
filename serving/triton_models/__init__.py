"""Triton python models of SMR; ``smr export`` copies them into the model repository as ``model.py``."""
