"""attnlens.tiny: the teaching kit built on the attention library (synthetic data, the tiny
transformer, its training loop and the visual tour)."""
