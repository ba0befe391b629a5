"""Tests of gr/model/."""
