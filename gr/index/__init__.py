"""The index: docid tries (host and device arrays), vocabularies, the artifact.

Holds the trie a constrained decoder walks, the vocabularies that encode
docids as tokens, the saved index artifact and the one-time build of a
corpus's docid table and vocabulary. May import gr.data, gr.docids and the
shared leaves (atomic_io, batching, partitioning).
"""
