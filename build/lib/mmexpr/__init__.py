"""mmexpr: multimodal expression recognition training system (ABAW EXPR)."""

__version__ = "0.1.0"
