#!/bin/bash
# postscript-cost.sh [lua dir] [calls]
#
# Counts the CPU instructions Redis spends running postScript for one
# merged call of 10 posts (POSTS=n for n) into one session whose history is
# full (so every call trims), under valgrind's callgrind, counting only
# inside EVALSHA.
# Instruction counts are the same from run to run whatever else the
# machine does, so two versions of the script can be compared on a noisy
# machine where timings cannot. Needs valgrind, redis-server,
# redis-benchmark and python3. Example, against the last commit:
#
#   mkdir -p /tmp/old && git archive HEAD store/redisstore/lua | tar -x -C /tmp/old
#   tools/postscript-cost.sh /tmp/old/store/redisstore/lua; tools/postscript-cost.sh
#
# KEEP=1 keeps the callgrind output (its directory is printed) for
# callgrind_annotate.
set -euo pipefail
SRC=${1:-store/redisstore/lua}
N=${2:-200}
POSTS=${POSTS:-10}
WARM=$((1100 / POSTS)) # fills the 1000-entry history
PORT=${PORT:-6399}
R="redis-cli -p $PORT"
OUT=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] && echo "callgrind output: $OUT/cg" || rm -rf "$OUT"' EXIT

valgrind --tool=callgrind --toggle-collect=evalShaCommand --callgrind-out-file="$OUT/cg" \
	redis-server --port "$PORT" --save '' --appendonly no >/dev/null 2>&1 &
VG=$!
for _ in $(seq 100); do $R ping >/dev/null 2>&1 && break; sleep 0.2; done

SCRIPT=$(cat "$SRC/prelude.lua" "$SRC/post.lua")
SHA=$($R script load "$SCRIPT")
K='b:{x}s:ses1'
$R hset $K id ses1 tn t pf api ch api us u st 1 bot '' md '{}' ca 1 ua 1 la 1 \
	ex 99999999999999 seq 0 lid '' lms 0 v 0 gx 1795297498123 >/dev/null
# postScript's arguments: ttl, ret, limit, event prefix, idempotency ttl;
# then per post: slotp, now, tenant, rnd, suffix, idempotency key,
# fingerprint, and, since the platform work, delivery id and the tenant's
# activity index. Scripts from before then take the first seven (EACH=7).
EACH=${EACH:-9}
ARGS="86400000 86400000 1000 b:ev: 86400000"
KEYS=""
for _ in $(seq "$POSTS"); do
	KEYS="$KEYS $K"
	ARGS="$ARGS b:{x} 1795297498123 t 0123456789abcdef \"dir\":\"out\",\"text\":\"shipped\",\"st\":\"delivered\"} '' ''"
	[ "$EACH" = 9 ] && ARGS="$ARGS '' b:{y}sa:t"
done
eval redis-benchmark -p "$PORT" -c 1 -n "$WARM" -q EVALSHA "$SHA" "$POSTS" $KEYS $ARGS >/dev/null 2>&1
# Count only the calls into the full history, not the warm-up's.
callgrind_control -z "$VG" >/dev/null 2>&1
eval redis-benchmark -p "$PORT" -c 1 -n "$N" -q EVALSHA "$SHA" "$POSTS" $KEYS $ARGS >/dev/null 2>&1
echo "history: $($R xlen 'b:{x}h:ses1') entries"
$R shutdown nosave >/dev/null 2>&1 || true
wait "$VG" 2>/dev/null || true
callgrind_annotate "$OUT/cg" 2>/dev/null | awk -v n=$N -v p="$POSTS" '/PROGRAM TOTALS/ {
	gsub(",", "", $1); printf "%.0f instructions per call of %d posts (%.0f per post)\n", $1 / n, p, $1 / n / p }'
