"""Tests of gr/index/."""
