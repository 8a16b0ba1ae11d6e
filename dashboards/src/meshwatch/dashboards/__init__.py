"""meshwatch's Grafana dashboards, generated in code; the JSON they produce is committed."""
