"""What builds the project's own artifacts: SAE training and the zoo build."""
