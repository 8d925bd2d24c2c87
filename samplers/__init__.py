"""In-stream class balancing with SMOTE-family synthesizers."""
