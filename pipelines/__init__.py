"""Runnable services built on the serving runtime."""
