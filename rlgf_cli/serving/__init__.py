"""The OpenAI-compatible server (``rlgf serve``) and its pure request/response contract."""
