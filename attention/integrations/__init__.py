"""Bridges to other libraries. ``attnlens.integrations.huggingface``: ``attn_implementation="attnlens"``
for Hugging Face transformers (imported on demand, so attnlens never needs transformers)."""
