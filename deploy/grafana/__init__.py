"""Grafana dashboards (built by ``build.py``) and their provisioning files."""
