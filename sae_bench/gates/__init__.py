"""The gates: a new SAE against the cases it replaces, and a new release against the one it replaces."""
