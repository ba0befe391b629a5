"""Tests of gr/decode/."""
