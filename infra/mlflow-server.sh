#!/usr/bin/env bash
# Start a team MLflow tracking server: PostgreSQL backend, artifacts in S3 (proxied, so clients need no
# S3 keys for them), basic-auth login. See infra/mlflow-server.md for the whole deployment.
#
# Usage (settings from the environment; nothing secret on the command line, where `ps` would show it):
#   export MLFLOW_BACKEND_STORE_URI=postgresql://mlflow@db.internal:5432/mlflow   # password: ~/.pgpass or PGPASSWORD
#   export MLFLOW_ARTIFACTS_DESTINATION=s3://ganpipe-mlflow/artifacts
#   export MLFLOW_AUTH_ADMIN_PASSWORD=...   # first start only: creates the admin user (see mlflow-server.md)
#   export MLFLOW_FLASK_SERVER_SECRET_KEY=...  # CSRF key, stable across restarts: python -c 'import secrets; print(secrets.token_hex(32))'
#   export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...   # or an instance role
#   export MLFLOW_S3_ENDPOINT_URL=http://seaweedfs.internal:8333  # only for a non-AWS S3 store
#   infra/mlflow-server.sh                 # binds 127.0.0.1:5000; put a TLS reverse proxy in front
# Optional: MLFLOW_HOST (default 127.0.0.1), MLFLOW_PORT (5000), MLFLOW_WORKERS (4),
#   MLFLOW_ALLOWED_HOSTS (e.g. mlflow.example.com), MLFLOW_AUTH_CONFIG_PATH (basic-auth ini file).
# Extra arguments go to `mlflow server`.
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI, e.g. postgresql://mlflow@db:5432/mlflow}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION, e.g. s3://bucket/mlflow-artifacts}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY (basic-auth CSRF key), e.g. from secrets.token_hex(32)}"
case "$MLFLOW_BACKEND_STORE_URI" in
  *://*:*@*) echo "mlflow-server.sh: put the database password in ~/.pgpass or PGPASSWORD, not in the URI" >&2
             exit 2 ;;
esac

HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
args=(server
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI"
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
  --app-name basic-auth
  --host "$HOST" --port "$PORT" --workers "${MLFLOW_WORKERS:-4}")
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
  args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi
if [[ "$HOST" != "127.0.0.1" && "$HOST" != "localhost" ]]; then
  echo "mlflow-server.sh: binding $HOST: keep it on a private network behind TLS (see mlflow-server.md)" >&2
fi
# The auth database (users, permissions) defaults to sqlite in the working directory; point
# MLFLOW_AUTH_CONFIG_PATH at an ini whose database_uri is PostgreSQL for a durable deployment.
exec mlflow "${args[@]}" "$@"
