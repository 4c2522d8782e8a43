"""The audit-record domain: models, schemas, service and router."""
