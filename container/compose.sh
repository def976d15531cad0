#!/usr/bin/env bash
# `make up` / `make down`: run Docker Compose with whichever one this machine has, or say in one line
# that it has none. Order: Docker's compose plugin, a docker-compose on PATH, then the Compose v2
# binary the dev extra installs into the virtualenv (its Python wrapper exits 0 even on errors, so
# the binary itself is called).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}

if command -v docker >/dev/null && docker compose version >/dev/null 2>&1; then
    exec docker compose "$@"
fi
if command -v docker-compose >/dev/null && [[ $(command -v docker-compose) != */"$venv"/bin/docker-compose ]]; then
    exec docker-compose "$@"
fi
for binary in "$venv"/lib/python3*/site-packages/compose/docker-compose; do
    [[ -x $binary ]] && exec "$binary" "$@"
done
echo "make: no Docker Compose found: install Docker's compose plugin or docker-compose" \
    "(make test installs one into $venv)" >&2
exit 1
