"""zh-minilab: a notebook-driven research lab for small Chinese pretrained language models."""

__version__ = "0.1.0"
