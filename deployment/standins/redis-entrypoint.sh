#!/bin/sh
# As the official redis image does: a `redis-server` started without a configuration file listens
# on every interface of the container (protected mode off), since the container network is the
# boundary; any other command runs as given.
set -eu
if [ "${1:-}" = redis-server ]; then
  shift
  case "${1:-}" in
    *.conf) exec redis-server "$@" ;;
  esac
  exec redis-server --protected-mode no "$@"
fi
exec "$@"
