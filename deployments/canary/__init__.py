"""The in-cluster canary gate (the plain controller is rollout.controller)."""
