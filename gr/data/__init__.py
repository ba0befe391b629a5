"""BEIR data, the shipped news benchmark and its TFDS builder."""
