"""Siamese networks in JAX/Flax: verification, one-shot classification and retrieval."""
