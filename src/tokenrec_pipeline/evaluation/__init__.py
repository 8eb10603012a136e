"""The evaluation protocol: full ranking, significance tests, and the faiss item index used for retrieval."""
