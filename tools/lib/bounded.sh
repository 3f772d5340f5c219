# A test pass with a time limit, for tools/test. A pass that hangs would otherwise run until CI's own limit (90
# minutes) and end with nothing but the last test that happened to finish; past its limit, this prints the tests the
# pass started and did not finish, and the threads of its test process (gdb), then fails the pass.
#
#   coffer_bounded 900 "swift test" swift test --skip-build
coffer_bounded() {
    local limit="$1" what="$2"
    shift 2
    local log
    log="$(mktemp)"
    "$@" > >(tee "$log") 2>&1 &
    local pid=$! started=$SECONDS
    while kill -0 "$pid" 2>/dev/null; do
        if (( SECONDS - started >= limit )); then
            local tree
            tree="$(coffer_descendants "$pid")"
            coffer_bounded_report "$what" "$limit" "$log" $tree
            kill -KILL $tree "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            rm -f "$log"
            echo "$what did not finish in $limit s (a hang: its unfinished tests and threads are above)" >&2
            return 124
        fi
        sleep 1
    done
    local status=0
    wait "$pid" || status=$?
    rm -f "$log"
    return "$status"
}

# Every process under `$1`, children first.
coffer_descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1"); do
        coffer_descendants "$child"
        echo "$child"
    done
}

# What a hung pass leaves to read: the threads of its test processes (among the PIDs after the first three
# arguments) and the tests it started and did not finish.
coffer_bounded_report() {
    local what="$1" limit="$2" log="$3" process
    shift 3
    for process in "$@"; do
        [[ "$(cat "/proc/$process/cmdline" 2>/dev/null | tr '\0' ' ')" == *.xctest* ]] || continue
        if command -v gdb >/dev/null; then
            echo "== $what: threads of test process $process after $limit s" >&2
            gdb -p "$process" -batch -ex 'thread apply all bt 30' 2>/dev/null | grep -E '^(Thread|#)' | cut -c1-240 >&2 || true
        fi
    done
    # swift-testing says "◇ Test NAME started." and later "✔/✘ Test NAME passed/failed ..." (colour codes aside).
    echo "== $what: tests started and not finished after $limit s" >&2
    sed 's/\x1b\[[0-9;]*m//g' "$log" | python3 -c '
import re, sys
started, ended = [], set()
for line in sys.stdin:
    m = re.search(r"Test (.+?) started\.", line)
    if m:
        started.append(m.group(1))
        continue
    m = re.search(r"Test (.+?)(?: with \d+ test cases?)? (?:passed|failed|skipped)", line)
    if m:
        ended.add(m.group(1))
for name in started:
    if name not in ended:
        print("  still running:", name)
' >&2
}
