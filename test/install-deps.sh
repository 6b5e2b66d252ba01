#!/usr/bin/env bash
#
# test/install-deps.sh -- install the Debian 12 packages that building, testing,
# benchmarking and the demo need.  Idempotent: installs only what is missing,
# and runs `apt-get update` only when an install fails.  Needs root.

set -euo pipefail

PACKAGES=(
	build-essential
	postgresql-15
	postgresql-server-dev-15
	postgresql-contrib
	libcurl4-openssl-dev
	libcjson-dev
	duktape-dev
	postgresql-15-pgtap
	libtap-parser-sourcehandler-pgtap-perl
	postgresql-15-cron
	nginx
	python3
	curl
)

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	echo "all ${#PACKAGES[@]} packages present"
	exit 0
fi

echo "installing: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: not root, cannot install ${missing[*]}" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q "${missing[@]}" </dev/null; then
	apt-get update -q </dev/null
	apt-get install -y -q "${missing[@]}" </dev/null
fi
