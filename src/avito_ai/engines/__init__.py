"""Model engines behind one protocol (see base.py). Nothing here imports FastAPI."""
