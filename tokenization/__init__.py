"""tokenization stage."""
