"""Monitoring: drift measures and references, the prediction log, and the champion/challenger (A/B) report."""
