"""hps-mlflow-init: make sure the MLflow user that hps logs as exists, is not an admin, and has the
password from .env. One-shot service `mlflow-init` in docker-compose.yml, run after the tracking
server is healthy and before anything that logs to it.

Environment (what docker-compose.yml passes):
  MLFLOW_TRACKING_URI                         the server, e.g. http://mlflow:5000
  MLFLOW_TRACKING_USERNAME / _PASSWORD        the ADMIN's credentials: creating users is admin-only,
                                              and these are the variables MLflow's client reads
  MLFLOW_HPS_USERNAME / MLFLOW_HPS_PASSWORD   the user to create or update

The hps user gets no permission grants: basic-auth gives every user MANAGE on the experiments and
registered models it creates and MLFLOW_DEFAULT_PERMISSION (READ) on everything else, which is all
`hps run/resume/evaluate/predict` need. `.env` is the source of truth for its password: an existing
user's password is reset to the value in `.env` on every start, and an existing user that was made an
admin is demoted. Exit status 0 when the user is ready, 1 with a one-line reason otherwise.
"""

from __future__ import annotations

import os
import sys
import warnings

import requests

# Importing MLflow's auth client imports its FastAPI app, whose Starlette import warns about a
# deprecation that is MLflow's business; keep this one-shot's output to its own lines.
warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.server.auth.client import AuthServiceClient  # noqa: E402

PREFIX = "hps-mlflow-init"


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise SystemExit(f"{PREFIX}: {name} is not set")
    return value


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "404" in str(exc)


def ensure_user(uri: str, admin: str, username: str, password: str) -> str:
    """Create ``username`` (not an admin) or reset its password and admin flag; return what was done.

    The admin's credentials come from MLFLOW_TRACKING_USERNAME/PASSWORD in the environment."""
    if username == admin:
        raise SystemExit(f"{PREFIX}: MLFLOW_HPS_USERNAME must not be the admin user {admin!r}")
    client = AuthServiceClient(uri)
    try:
        user = client.get_user(username)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        client.create_user(username, password)
        return "created"
    client.update_user_password(username, password)
    if user.is_admin:
        client.update_user_admin(username, False)
        return "updated (password reset, admin rights removed)"
    return "updated (password reset)"


def check_login(uri: str, username: str, password: str) -> None:
    """Log in as the hps user once: its credentials work and it is not an admin."""
    resp = requests.get(f"{uri.rstrip('/')}/api/2.0/mlflow/users/current", auth=(username, password), timeout=30)
    if resp.status_code != 200:
        raise SystemExit(f"{PREFIX}: logging in as {username!r} failed with HTTP {resp.status_code}")
    if resp.json().get("user", {}).get("is_admin"):
        raise SystemExit(f"{PREFIX}: {username!r} is still an MLflow admin")


def main() -> int:
    uri = _env("MLFLOW_TRACKING_URI")
    admin = _env("MLFLOW_TRACKING_USERNAME")
    _env("MLFLOW_TRACKING_PASSWORD")
    username = _env("MLFLOW_HPS_USERNAME")
    password = _env("MLFLOW_HPS_PASSWORD")
    try:
        done = ensure_user(uri, admin, username, password)
        check_login(uri, username, password)
    except MlflowException as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "401" in text or "403" in text:
            print(f"{PREFIX}: the server refused the admin credentials (MLFLOW_ADMIN_USERNAME/MLFLOW_ADMIN_PASSWORD "
                  f"in .env): if the admin password was changed through the API, put the new one into .env ({text})",
                  file=sys.stderr)
        else:
            print(f"{PREFIX}: could not set up MLflow user {username!r}: {text}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:
        print(f"{PREFIX}: MLflow server {uri} not reachable: {exc}", file=sys.stderr)
        return 1
    print(f"{PREFIX}: MLflow user {username!r} {done}; it is not an admin")
    return 0


if __name__ == "__main__":
    sys.exit(main())
