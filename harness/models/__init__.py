"""Loading a causal LM (embedded package GGUF, folder, hub id, random init) and identifying its weights by content."""
