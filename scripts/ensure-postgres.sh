#!/usr/bin/env bash
# Make sure PostgreSQL runs on 127.0.0.1:5432 and that the test role and database exist.
# Own role + password over TCP works whatever the machine's auth setup (trust, or peer + scram).
set -euo pipefail
ROLE="${HARVEST_PG_ROLE:-harvest}"
PASSWORD="${HARVEST_PG_PASSWORD:-harvest}"
DATABASES="${HARVEST_PG_DATABASES:-harvest_test harvest_prefect harvest_bench}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

if ! command -v pg_lsclusters >/dev/null 2>&1; then
  echo ">> installing postgresql" >&2
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  version="$(ls /etc/postgresql | sort -n | tail -1)"
  echo ">> starting PostgreSQL $version" >&2
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
fi
psql_admin() { $SUDO runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qtAc "$1"; }
if [ "$(psql_admin "SELECT 1 FROM pg_roles WHERE rolname='$ROLE'")" != "1" ]; then
  psql_admin "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD' CREATEDB"
fi
for db in $DATABASES; do
  if [ "$(psql_admin "SELECT 1 FROM pg_database WHERE datname='$db'")" != "1" ]; then
    psql_admin "CREATE DATABASE $db OWNER $ROLE"
  fi
done
