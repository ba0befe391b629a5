"""Docid schemes: how documents are named."""
