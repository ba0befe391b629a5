"""Helpers the tests share: a tiny random BERT, a toy seqio task, the
multihost worker process."""
