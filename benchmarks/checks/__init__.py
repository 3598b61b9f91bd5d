"""Verification harnesses, not measurements: the GPU check and its goals, the XLA check, fault injection."""
