"""Database access for the dataset component: SQLAlchemy errors become DatasetError."""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from cloud.datasets.errors import DatasetError


class DatabaseGuard:
    """A connection (or transaction) whose SQLAlchemy errors become DatasetError."""

    def __init__(self, engine: Engine, what: str, *, begin: bool) -> None:
        self._engine, self._what, self._begin = engine, what, begin
        self._cm: Any = None

    def __enter__(self) -> Connection:
        try:
            self._cm = self._engine.begin() if self._begin else self._engine.connect()
            conn: Connection = self._cm.__enter__()
        except SQLAlchemyError as e:
            raise DatasetError(f"cannot {self._what}: database error: {e}") from e
        return conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        try:
            self._cm.__exit__(exc_type, exc, tb)
        except SQLAlchemyError as e:
            raise DatasetError(f"cannot {self._what}: database error: {e}") from e
        if isinstance(exc, SQLAlchemyError):
            raise DatasetError(f"cannot {self._what}: database error: "
                               f"{str(exc).splitlines()[0]}") from exc
        return False
