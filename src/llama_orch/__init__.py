"""llama-orch: share the NVIDIA GPUs of one workstation between many clients."""

__version__ = "0.1.0"
