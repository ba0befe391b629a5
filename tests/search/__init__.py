"""Tests of gr/search/."""
