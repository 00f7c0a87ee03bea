"""The HTTP front door: IngressServer (plain), FastAPI app, auth, OpenAI surface, error mapping."""
