"""Real, empty MLflow SQLite stores without paying for MLflow's schema migrations in every test.

Creating a SQLite tracking store runs MLflow's ~60 alembic migrations: 3-7 s of CPU each time on the 2-core machines.
The first call makes one store (with MLflow itself); later calls copy that file. A copy is the same real store
MLflow would have made (MLflow only checks that its schema is at the head revision when it opens one).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_TEMPLATE: Path | None = None


def _template() -> Path:
    global _TEMPLATE
    if _TEMPLATE is None or not _TEMPLATE.exists():
        from mlflow.tracking import MlflowClient

        folder = tempfile.mkdtemp(prefix="hps-mlflow-template-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        path = Path(folder) / "mlflow.db"
        MlflowClient(f"sqlite:///{path}").search_experiments()  # creates the tables (every migration)
        _TEMPLATE = path
    return _TEMPLATE


def sqlite_store(path: Path) -> str:
    """A fresh, empty MLflow SQLite store at ``path``; its tracking URI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template(), path)
    return f"sqlite:///{path}"
