"""submit stage."""
