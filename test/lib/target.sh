# shellcheck shell=bash
#
# test/lib/target.sh -- start and stop the bundled test targets
# (test/targets/*.py) from the process tests.  Source it from bash, from the
# repository's root:
#
#	. test/lib/target.sh
#	target_start scim_pid test/targets/scim_server.py "$PORT" "$LOG" [--token T ...]
#	target_stop scim_pid
#
# target_start puts the server's pid into the named variable and returns once
# the server prints "listening on 127.0.0.1:PORT" (non-zero, with its log, if
# it does not within 10 s); target_stop kills it, waits and empties the
# variable (nothing to do when it is empty).

target_start()
{
	local var=$1 script=$2 port=$3 log=$4 pid
	shift 4
	printf -v "$var" '%s' ''
	rm -f "$log"                      # a restart must not find the last run's line
	if [ ! -f "$script" ]; then
		echo "test target $script not found" >&2
		return 1
	fi
	python3 "$script" --port "$port" "$@" >"$log" 2>&1 &
	pid=$!
	printf -v "$var" '%s' "$pid"
	for _ in $(seq 1 100); do
		grep -q "^listening on 127.0.0.1:$port\$" "$log" 2>/dev/null && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	echo "test target $script did not start on port $port:" >&2
	cat "$log" >&2
	return 1
}

target_stop()
{
	local pid=${!1}
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	printf -v "$1" '%s' ''
}
