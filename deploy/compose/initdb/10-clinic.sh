#!/usr/bin/env bash
# Creates phigate's database login and the clinic database, seeded with synthetic patients.
# The postgres image runs this on its first start; the quick-start test runs it against a
# throwaway cluster (PGHOST/PGPORT set), so what compose does is what is tested.
#
# phigate_app owns the clinic tables and has CREATEROLE: phigate provisions the per-role
# masked logins and masking views with it. Clients never see its password; phigate reads it
# from PHIGATE_UPSTREAM_PASSWORD.
set -euo pipefail
: "${PHIGATE_UPSTREAM_PASSWORD:?PHIGATE_UPSTREAM_PASSWORD is not set}"
seed="${PHIGATE_SEED_SQL:-/seed/clinic.sql}"
psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "${POSTGRES_USER:-postgres}")

# The password is read from the environment by psql itself (\getenv), never on a command line.
"${psql[@]}" --dbname postgres <<'SQL'
\getenv upstream_password PHIGATE_UPSTREAM_PASSWORD
SET password_encryption = 'scram-sha-256';
CREATE ROLE phigate_app LOGIN CREATEROLE PASSWORD :'upstream_password';
CREATE DATABASE clinic OWNER phigate_app;
SQL

{ echo 'SET ROLE phigate_app;'; cat "$seed"; } | "${psql[@]}" --dbname clinic
echo "clinic database seeded"
