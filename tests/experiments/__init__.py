"""Tests of gr/experiments/."""
