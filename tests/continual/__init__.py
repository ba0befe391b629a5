"""Tests of gr/continual/."""
