import os

# huggingface_hub reads these at import; the fake hub speaks plain HTTP, never Xet.
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
