"""Data, fine-tuning and regularizers. Knows nothing of how masks are chosen."""
