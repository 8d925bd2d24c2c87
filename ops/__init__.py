"""Augmentation ops that run on whole batches where the batch lives."""
