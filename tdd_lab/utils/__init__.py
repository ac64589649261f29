"""Small shared helpers (validation, tensor broadcasting, tokenizer guards)."""
