"""Django's PostgreSQL backend with a cheaper pool health check: see base.py."""
