"""PyTorch backends: real diffusion models and verifiers loaded from local folders (the `torch` extra)."""
