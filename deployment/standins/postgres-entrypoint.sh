#!/bin/sh
# The official postgres image's first-start behaviour, for what compose.yaml uses: a cluster in
# $PGDATA owned by postgres, the POSTGRES_USER role with POSTGRES_PASSWORD (scram-sha-256 from
# any address), POSTGRES_DB, then the server in the foreground as postgres.
set -eu
bin=$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)
if [ "${1:-postgres}" != postgres ]; then exec "$@"; fi
# As root: the data belongs to postgres, which the server then runs as. As another user (a pod's
# runAsUser with fsGroup): that user owns what it creates and runs the server itself.
run_as() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$1"; else sh -c "$1"; fi; }
mkdir -p "$PGDATA" /run/postgresql 2>/dev/null || mkdir -p "$PGDATA"
if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$PGDATA" /run/postgresql; fi
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  if [ "$(id -u)" = 0 ]; then chown postgres "$pwfile"; fi
  run_as "$bin/initdb -D '$PGDATA' -U '$user' --pwfile='$pwfile' --auth-local=trust --auth-host=scram-sha-256" >/dev/null
  rm -f "$pwfile"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "host all all ::/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    run_as "$bin/pg_ctl -D '$PGDATA' -w -o \"-c listen_addresses='' -c unix_socket_directories=/tmp\" start" >/dev/null
    run_as "psql -q -h /tmp -U '$user' -d postgres -c 'CREATE DATABASE \"$db\" OWNER \"$user\"'"
    run_as "$bin/pg_ctl -D '$PGDATA' -w stop" >/dev/null
  fi
fi
if [ "$(id -u)" != 0 ]; then
  exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*'
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \
  "$bin/postgres" -D "$PGDATA" -c listen_addresses='*'

