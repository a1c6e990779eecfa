"""Champion/challenger traffic splitting and gradual rollout."""
