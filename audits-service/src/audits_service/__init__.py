"""audits_service."""
