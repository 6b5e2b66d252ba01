# shellcheck shell=bash
#
# test/lib/cluster.sh -- a private, throw-away PostgreSQL 15 cluster for tests,
# benchmarks and demos.  Source it from bash:
#
#	. test/lib/cluster.sh
#	cluster_start                         # or: cluster_start "shared_buffers = '512MB'" ...
#	psql -c 'select 1'                    # PGHOST/PGPORT/PGUSER/PGDATABASE are exported
#	cluster_restart immediate             # crash-restart (process tests)
#	cluster_log                           # print the server log
#	cluster_stop                          # also run automatically at exit
#
# The cluster lives in a fresh temp dir ($XPROV_CLUSTER_DIR, e.g.
# /tmp/xprov-cluster.AbC123) owned by the postgres OS user, because initdb
# refuses to run as root; server commands run through runuser when we are
# root.  It listens on a unix socket in that dir only (no TCP, so parallel
# clusters never collide), on port $XPROV_PORT (default 55432; other users of
# this file pick another one), with xprov and pg_cron preloaded and fsync on
# (durability tests rely on it).  Extra arguments to cluster_start are
# appended to postgresql.conf verbatim, one per line, so they override the
# defaults below (e.g. "listen_addresses = 'localhost'" for TCP clients).
#
# Exported after cluster_start:
#	PGHOST PGPORT PGUSER=postgres PGDATABASE=postgres
#	XPROV_CLUSTER_DIR   the temp dir (also the socket directory)
#	XPROV_PGDATA        the data directory
#	XPROV_SERVER_LOG    the server log file
#	XPROV_PGBIN         the PostgreSQL 15 bin dir
#
# Environment read:
#	XPROV_PORT          port number (default 55432)
#	XPROV_PGBIN         default /usr/lib/postgresql/15/bin
#	XPROV_KEEP_CLUSTER  1 = cluster_stop stops the server but keeps the dir
#
# An EXIT trap stops the cluster; an EXIT trap set before cluster_start is kept
# and runs after ours.  A script that sets its own EXIT trap after
# cluster_start must call cluster_stop from it.

: "${XPROV_PGBIN:=/usr/lib/postgresql/15/bin}"
export XPROV_PGBIN

# Run a command as the postgres OS user (directly if we are not root), from
# the cluster dir so that a cwd unreadable by postgres does not matter.
_xprov_as_pg()
{
	if [ "$(id -u)" -eq 0 ]; then
		(cd "${XPROV_CLUSTER_DIR:-/}" && runuser -u postgres -- "$@")
	else
		(cd "${XPROV_CLUSTER_DIR:-/}" && "$@")
	fi
}

_xprov_pg_ctl()
{
	_xprov_as_pg "$XPROV_PGBIN/pg_ctl" -D "$XPROV_PGDATA" "$@"
}

cluster_start()
{
	local port="${XPROV_PORT:-55432}" dir setting

	if [ -n "${XPROV_CLUSTER_DIR:-}" ] && [ -d "${XPROV_CLUSTER_DIR:-}" ]; then
		echo "cluster_start: a cluster is already running in $XPROV_CLUSTER_DIR" >&2
		return 1
	fi
	if [ ! -x "$XPROV_PGBIN/initdb" ]; then
		echo "cluster_start: $XPROV_PGBIN/initdb not found (install postgresql-15)" >&2
		return 1
	fi
	if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
		echo "cluster_start: no 'postgres' OS user to own the cluster" >&2
		return 1
	fi

	dir=$(mktemp -d /tmp/xprov-cluster.XXXXXX) || return 1
	chmod 700 "$dir"
	[ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
	XPROV_CLUSTER_DIR=$dir
	XPROV_PGDATA=$dir/data
	XPROV_SERVER_LOG=$dir/server.log
	export XPROV_CLUSTER_DIR XPROV_PGDATA XPROV_SERVER_LOG
	_xprov_cluster_install_trap

	# C locale: stable sort order and messages for expected outputs.
	# --no-sync: initdb's own fsync buys nothing for a throw-away cluster;
	# the running server keeps fsync on.
	if ! _xprov_as_pg "$XPROV_PGBIN/initdb" -D "$XPROV_PGDATA" -U postgres \
		--auth=trust --encoding=UTF8 --locale=C --no-sync \
		>"$dir/initdb.log" 2>&1; then
		echo "cluster_start: initdb failed:" >&2
		cat "$dir/initdb.log" >&2
		return 1
	fi

	{
		echo ""
		echo "# --- test/lib/cluster.sh ---"
		echo "listen_addresses = ''"
		echo "port = $port"
		echo "unix_socket_directories = '$dir'"
		echo "shared_preload_libraries = 'xprov, pg_cron'"
		echo "cron.database_name = 'postgres'"
		echo "max_worker_processes = 32"
		echo "max_connections = 200"
		echo "fsync = on"
		echo "synchronous_commit = on"
		echo "lc_messages = 'C'"
		echo "log_line_prefix = '%m [%p] %q%a@%d '"
		echo "log_min_messages = info"
		for setting in "$@"; do
			echo "$setting"
		done
	} | _xprov_as_pg tee -a "$XPROV_PGDATA/postgresql.conf" >/dev/null

	if ! _xprov_pg_ctl -l "$XPROV_SERVER_LOG" -w -t 60 start >"$dir/pg_ctl.log" 2>&1; then
		echo "cluster_start: the server did not start:" >&2
		cat "$dir/pg_ctl.log" >&2
		cluster_log >&2
		return 1
	fi

	export PGHOST="$dir" PGPORT="$port" PGUSER=postgres PGDATABASE=postgres
	echo "cluster_start: PostgreSQL $("$XPROV_PGBIN/postgres" -V | awk '{print $3}') running in $dir (port $port)" >&2
}

cluster_stop()
{
	[ -n "${XPROV_CLUSTER_DIR:-}" ] || return 0
	if [ -f "$XPROV_PGDATA/postmaster.pid" ]; then
		_xprov_pg_ctl -w -t 60 -m fast stop >/dev/null 2>&1 ||
			_xprov_pg_ctl -w -t 30 -m immediate stop >/dev/null 2>&1 ||
			echo "cluster_stop: could not stop the server in $XPROV_PGDATA" >&2
	fi
	if [ "${XPROV_KEEP_CLUSTER:-0}" = 1 ]; then
		echo "cluster_stop: kept $XPROV_CLUSTER_DIR (XPROV_KEEP_CLUSTER=1)" >&2
	else
		rm -rf "$XPROV_CLUSTER_DIR"
	fi
	unset XPROV_CLUSTER_DIR XPROV_PGDATA XPROV_SERVER_LOG PGHOST PGPORT PGUSER PGDATABASE
}

# cluster_restart [fast|immediate|smart]: restart the running cluster; with
# "immediate" the server is killed without a checkpoint and recovers at start,
# which is how crash-recovery tests simulate a crash.
cluster_restart()
{
	local mode="${1:-fast}"

	if ! _xprov_pg_ctl -l "$XPROV_SERVER_LOG" -w -t 120 -m "$mode" restart >>"$XPROV_CLUSTER_DIR/pg_ctl.log" 2>&1; then
		echo "cluster_restart: restart (-m $mode) failed" >&2
		tail -n 50 "$XPROV_CLUSTER_DIR/pg_ctl.log" >&2
		return 1
	fi
}

# cluster_pg_ctl ARGS...: any other pg_ctl action on the cluster (as postgres),
# e.g. cluster_pg_ctl reload, or cluster_pg_ctl -m immediate -w stop.
cluster_pg_ctl()
{
	_xprov_pg_ctl "$@"
}

# cluster_psql ARGS...: psql that stops at the first error and reads no ~/.psqlrc.
cluster_psql()
{
	"$XPROV_PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"
}

cluster_log()
{
	if [ -n "${XPROV_SERVER_LOG:-}" ] && [ -f "$XPROV_SERVER_LOG" ]; then
		echo "----- server log: $XPROV_SERVER_LOG -----"
		cat "$XPROV_SERVER_LOG"
		echo "----- end of server log -----"
	else
		echo "cluster_log: no server log" >&2
	fi
}

_xprov_cluster_on_exit()
{
	cluster_stop
}

# Install the EXIT trap once, keeping an EXIT trap that was set before; make
# INT and TERM go through EXIT so that ^C or a CI kill stops the server too.
_xprov_cluster_install_trap()
{
	local prev cmd=""
	local -a words

	[ "${_XPROV_TRAP_INSTALLED:-0}" = 1 ] && return 0
	prev=$(trap -p EXIT)
	if [ -n "$prev" ]; then
		eval "words=( $prev )"		# trap -- 'CMD' EXIT
		cmd=${words[2]}
	fi
	# shellcheck disable=SC2064
	trap "_xprov_cluster_on_exit${cmd:+; $cmd}" EXIT
	[ -z "$(trap -p INT)" ] && trap 'exit 130' INT
	[ -z "$(trap -p TERM)" ] && trap 'exit 143' TERM
	_XPROV_TRAP_INSTALLED=1
}
