"""Backbone embeddings and their on-disk cache (keyed by file content, backbone and preprocessing)."""

from .cache import EmbeddingCache
from .embed import Embedder, Embeddings, embed_dataset, feature_module

__all__ = ["Embedder", "EmbeddingCache", "Embeddings", "embed_dataset", "feature_module"]
