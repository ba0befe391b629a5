"""Tests of gr/queries/."""
