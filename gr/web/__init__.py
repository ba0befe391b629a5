"""The docid decoding service over HTTP (FastAPI): app.py, and the search page."""
