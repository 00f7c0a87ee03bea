"""The shared base pools: BaseLLMServer (plain) and its Serve deployment, adapters, batcher, metrics."""
