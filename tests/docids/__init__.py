"""Tests of gr/docids/."""
