from servicekit import NotFound, ServiceError


class AuditNotFound(NotFound):
    title = "Audit record not found"


class IdempotencyKeyReused(ServiceError):
    status = 422
    code = "idempotency_key_reused"
    title = "Idempotency key reused with a different request"


class IdempotencyInProgress(ServiceError):
    status = 409
    code = "idempotency_in_progress"
    title = "A request with this idempotency key is still in progress"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})
