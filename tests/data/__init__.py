"""Tests of gr/data/."""
