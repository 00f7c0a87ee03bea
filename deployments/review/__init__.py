"""Human review (hitl) on the ingress: reviewer login, pages, routes and metrics."""
