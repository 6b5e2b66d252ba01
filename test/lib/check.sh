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
	fi
}

q() { psql -qAtX -v ON_ERROR_STOP=1 -c "$1"; }
