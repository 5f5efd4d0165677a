"""The sample store: append-only, content-keyed JSONL of completions and the caches derived from them (grades, scores)."""
