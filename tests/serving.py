"""MLflow's own scoring server (`mlflow models serve`) for a registered model, as a user starts it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from tests.conftest import free_port, stop_process_group


@contextlib.contextmanager
def scoring_server(model_uri: str, tracking_uri: str, folder: Path, cwd: Path | None = None) -> Iterator[str]:
    """A running `mlflow models serve -m MODEL_URI` (local environment), started in ``cwd``; yields its URL. Its
    output goes to ``folder/serve.log`` and shows in the failure when it does not start."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"}  # it runs uvicorn from PATH
    log_path = folder / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
                                   "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                assert server.poll() is None, log_path.read_text()[-2000:]
                try:
                    if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline, "scoring server did not start"
                time.sleep(0.5)
            yield url
        finally:
            stop_process_group(server)
