"""Embeddings: vectors reused, embedded now, or by an OpenAI batch (`embeddings.npy`, `embeddings_index.jsonl`)."""
