"""The OpenAI-compatible HTTP server over the engine (see openai.py for the routes)."""
