"""Structures turn scores into masks (unstructured, N:M) or a PruningPlan (channel)."""
