"""meshwatch's Prometheus recording and alerting rules and Alertmanager configuration."""
