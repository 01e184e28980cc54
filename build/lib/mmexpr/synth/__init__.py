"""Corpora this project writes itself: the synthetic demo corpus (faces and voices drawn from labels)."""
