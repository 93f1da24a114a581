#!/usr/bin/env bash
# The stock sqlite3 shell loads libpmpage_sqlite.so, creates a pool through a URI, writes, and a
# second shell reads it back. Usage: shell_test.sh SQLITE3 PATH/TO/libpmpage_sqlite.so
set -euo pipefail
shell=$1; ext=${2%.so}
pool=/dev/shm/pmpage-sqlite-shell-$$.pool
trap 'rm -f "$pool"' EXIT
out=$("$shell" <<SQL
.load $ext
.open file:$pool?vfs=pmpage&pool_size=32M
PRAGMA journal_mode=WAL;
CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1000) INSERT INTO t SELECT i, 'row ' || i FROM c;
SELECT count(*), sum(a) FROM t;
SQL
)
[ "$out" = $'wal\n1000|500500' ] || { echo "first shell printed: $out"; exit 1; }
out=$("$shell" <<SQL
.load $ext
.open file:$pool?vfs=pmpage
PRAGMA integrity_check;
SELECT b FROM t WHERE a = 777;
SQL
)
[ "$out" = $'ok\nrow 777' ] || { echo "second shell printed: $out"; exit 1; }
[ ! -e "$pool-wal" ] && [ ! -e "$pool-shm" ] || { echo "a WAL or shm file appeared beside the pool"; exit 1; }
# `.open --readonly` reads the pool and never writes it (issue #18: it used to open read-write).
before=$(md5sum < "$pool")
out=$("$shell" <<SQL
.load $ext
.open --readonly file:$pool?vfs=pmpage
SELECT count(*) FROM t;
INSERT INTO t VALUES (5000, 'refused');
SQL
) || true
[ "$out" = '1000' ] || { echo "a read-only shell printed: $out"; exit 1; }
[ "$(md5sum < "$pool")" = "$before" ] || { echo "a read-only shell changed the pool"; exit 1; }
# A second process is refused while a first one has the pool open (the pool's flock).
fifo=$(mktemp -u); mkfifo "$fifo"
{ printf '.load %s\n.open file:%s?vfs=pmpage\nSELECT count(*) FROM t;\n' "$ext" "$pool"; cat "$fifo"; } |
  "$shell" >/dev/null 2>&1 &
holder=$!
exec 3>"$fifo"   # keeps the first shell reading (and the pool open) until we close it
sleep 0.5
err=$("$shell" 2>&1 <<SQL || true
.log stderr
.load $ext
.open file:$pool?vfs=pmpage
SELECT count(*) FROM t;
SQL
)
exec 3>&-; wait "$holder"; rm -f "$fifo"
case $err in
  *"by another process"*) ;;
  *) echo "a second process was not refused with a clear message: $err"; exit 1 ;;
esac
echo "sqlite3 shell: extension loaded, pool written and read back, read-only without a write, a second process refused"
