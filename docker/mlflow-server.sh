#!/bin/sh
# hps-mlflow-server: entrypoint of the `mlflow` service (docker-compose.yml).
#
#   hps-mlflow-server [MLFLOW SERVER OPTIONS ...]
#
# 1. Refuses to start with a missing, placeholder or weak secret (hps-check-secrets).
# 2. Builds the PostgreSQL URI from POSTGRES_* and hands it to `mlflow server` through the
#    MLFLOW_BACKEND_STORE_URI environment variable (its --backend-store-uri option reads it), so the
#    password never appears on a command line (`ps` shows command lines to every user of the host).
# 3. Writes the basic-auth config (mode 0600) whose database_uri puts the users/permissions tables
#    into the same PostgreSQL database (own alembic table), instead of a SQLite file that would be
#    lost with the container. MLflow reads the admin user from MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD.
#    A checked credential is cached for 60 s: without it the server hashes the password again for
#    every request (0.34 s of CPU each, measured), and a search's per-epoch writes queue behind it.
#    A password changed through MLflow's API is dropped from the cache at once (one worker).
# 4. Drops POSTGRES_PASSWORD from the environment and execs `mlflow server "$@"`.
set -eu

hps-check-secrets POSTGRES_PASSWORD MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
: "${MLFLOW_AUTH_ADMIN_USERNAME:?hps-mlflow-server: MLFLOW_AUTH_ADMIN_USERNAME is not set}"
: "${MLFLOW_AUTH_CONFIG_PATH:?hps-mlflow-server: MLFLOW_AUTH_CONFIG_PATH is not set}"

# hps-check-secrets guarantees a URL-safe password (A-Z a-z 0-9 . _ ~ -): no quoting needed in the
# URI, and no '%' that the INI parser would take for interpolation.
db_uri="postgresql://${POSTGRES_USER:-mlflow}:${POSTGRES_PASSWORD}@${POSTGRES_HOST:-postgres}:${POSTGRES_PORT:-5432}/${POSTGRES_DB:-mlflow}"

umask 077
cat > "$MLFLOW_AUTH_CONFIG_PATH" <<EOF
[mlflow]
default_permission = ${MLFLOW_DEFAULT_PERMISSION:-READ}
database_uri = ${db_uri}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
EOF

export MLFLOW_BACKEND_STORE_URI="$db_uri"
unset POSTGRES_PASSWORD db_uri
exec mlflow server "$@"
