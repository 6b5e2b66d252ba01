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
	# _target_ names: the caller's variable may well be called pid
	local _target_var=$1 _target_script=$2 _target_port=$3 _target_log=$4 _target_pid
	shift 4
	printf -v "$_target_var" '%s' ''
	rm -f "$_target_log"              # a restart must not find the last run's line
	if [ ! -f "$_target_script" ]; then
		echo "test target $_target_script not found" >&2
		return 1
	fi
	python3 "$_target_script" --port "$_target_port" "$@" >"$_target_log" 2>&1 &
	_target_pid=$!
	printf -v "$_target_var" '%s' "$_target_pid"
	for _ in $(seq 1 100); do
		grep -q "^listening on 127.0.0.1:$_target_port\$" "$_target_log" 2>/dev/null && return 0
		kill -0 "$_target_pid" 2>/dev/null || break
		sleep 0.1
	done
	echo "test target $_target_script did not start on port $_target_port:" >&2
	cat "$_target_log" >&2
	return 1
}

target_stop()
{
	local _target_pid=${!1}

	if [ -n "$_target_pid" ]; then
		kill "$_target_pid" 2>/dev/null || true
		wait "$_target_pid" 2>/dev/null || true
	fi
	printf -v "$1" '%s' ''
}
