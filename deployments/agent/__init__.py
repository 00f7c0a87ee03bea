"""Agent deployments: AgentServer (the one walker of a fallback chain), PoolRouter, Serve glue."""
