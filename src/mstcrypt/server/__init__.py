"""Composition: configuration, storage and the FastAPI application of the platform."""
