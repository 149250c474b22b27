"""The results database every run records into, and the history and comparisons read from it."""
