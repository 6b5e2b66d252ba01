# shellcheck shell=bash
#
# test/lib/check.sh -- assertions for the process tests (test/process/*.sh).
# Source it from bash:
#
#	. test/lib/check.sh
#	check "what is checked" "$got" "$want"   # prints "ok - ..." or "not ok - ..."
#	q "SELECT ..."                           # psql -qAtX, stopping at an error
#	[ "$failures" -eq 0 ]                    # the script's verdict

failures=0

check()
{
	local what="$1" got="$2" want="$3"

	if [ "$got" = "$want" ]; then
		echo "ok - $what"
	else
		echo "not ok - $what: got '$got', want '$want'"
		failures=$((failures + 1))
		# a script may define on_check_failure to show what went wrong
		if declare -F on_check_failure >/dev/null; then
			on_check_failure
		fi
	fi
}

q() { psql -qAtX -v ON_ERROR_STOP=1 -c "$1"; }

# wait_for SQL SECONDS WANT: poll SQL every 0.1 s until it returns WANT or
# SECONDS pass; prints the last value (for check).
wait_for()
{
	local sql="$1" seconds="$2" want="$3" got=""

	for _ in $(seq 1 $((seconds * 10))); do
		got=$(psql -qAtX -c "$sql" 2>/dev/null || true)
		[ "$got" = "$want" ] && break
		sleep 0.1
	done
	printf '%s' "$got"
}

# create_try_sql: creates try_sql(sql text, keep boolean) in the current
# database, for checking what a statement answers: 'ok' or its SQLSTATE;
# keep = false rolls back what it did.
create_try_sql()
{
	psql -qAtX -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE FUNCTION try_sql(sql text, keep boolean)
RETURNS text
LANGUAGE plpgsql
AS $$
BEGIN
	EXECUTE sql;
	IF NOT keep THEN
		RAISE SQLSTATE 'XP000';
	END IF;
	RETURN 'ok';
EXCEPTION
	WHEN SQLSTATE 'XP000' THEN
		RETURN 'ok';
	WHEN OTHERS THEN
		RETURN SQLSTATE;
END
$$;
SQL
}
