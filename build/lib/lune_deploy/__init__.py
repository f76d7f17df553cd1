"""Deployment: per-Space settings (deploy.json) and ZeroGPU. Imports the engine for its limits and
names, never the web service."""
