"""Prometheus scrape config, alert rules and their tests, and the dashboard verifier."""
