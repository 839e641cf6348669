#!/bin/sh
# The official postgres image's first-start behaviour, for what compose.yaml uses: a cluster in
# $PGDATA owned by postgres, the POSTGRES_USER role with POSTGRES_PASSWORD (scram-sha-256 from
# any address), POSTGRES_DB, then the server in the foreground as postgres.
set -eu
bin=$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)
if [ "${1:-postgres}" != postgres ]; then exec "$@"; fi
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  chown postgres "$pwfile"
  su postgres -s /bin/sh -c "$bin/initdb -D '$PGDATA' -U '$user' --pwfile='$pwfile' --auth-local=trust --auth-host=scram-sha-256" >/dev/null
  rm -f "$pwfile"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "host all all ::/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    su postgres -s /bin/sh -c "$bin/pg_ctl -D '$PGDATA' -w -o \"-c listen_addresses=''\" start" >/dev/null
    su postgres -s /bin/sh -c "psql -q -U '$user' -d postgres -c 'CREATE DATABASE \"$db\" OWNER \"$user\"'"
    su postgres -s /bin/sh -c "$bin/pg_ctl -D '$PGDATA' -w stop" >/dev/null
  fi
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \
  "$bin/postgres" -D "$PGDATA" -c listen_addresses='*'

