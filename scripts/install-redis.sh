#!/usr/bin/env bash
# Installs redis-server from Debian/Ubuntu's packages when it is not on PATH (the embedded default Redis
# of `npm run demo`, `npm start` and the tests). As root it runs apt-get directly (containers and CI
# machines often have no sudo); otherwise through sudo.
set -euo pipefail
command -v redis-server >/dev/null 2>&1 && exit 0
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
as_root apt-get update
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server
