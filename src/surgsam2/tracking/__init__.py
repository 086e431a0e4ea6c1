"""Streaming tracker, offline propagation, prompts and per-frame results."""
