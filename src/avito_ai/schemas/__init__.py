"""Wire formats only."""
