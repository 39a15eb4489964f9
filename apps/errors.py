"""Errors a user's input can cause, each naming the field that was wrong (the API answers 4xx)."""

from __future__ import annotations


class FieldError(ValueError):
    """Bad input; `field` names the offending field, query parameter or header."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
