"""Tests of gr/train/."""
