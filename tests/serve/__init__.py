"""Tests of gr/serve/."""
