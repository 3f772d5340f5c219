# A test pass with a time limit, for tools/test. A pass that hangs would otherwise run until CI's own limit (90
# minutes) and end with nothing but the last test that happened to finish. A pass is taken for hung when it runs past
# its limit, or prints nothing for COFFER_BOUNDED_SILENCE seconds when that is set (a Swift suite prints a line as each
# of its tests ends; the registry suite on PostgreSQL went quiet for good both times CI hung, while its longest silence
# here is 17 s; the whole suite's is 155 s, a few long tests running last). Then this prints the tests the pass started and did not
# finish, the PostgreSQL backends at work and the threads of its test process (gdb), kills it and returns 124. The
# report also goes to the file COFFER_HANG_REPORTS names, when set, for tools/test to print again at its end: CI
# shows only the last lines of a run.
#
#   coffer_bounded 900 "swift test" swift test --skip-build
coffer_bounded() {
    local limit="$1" what="$2"
    shift 2
    local log silence="${COFFER_BOUNDED_SILENCE:-$limit}"
    log="$(mktemp)"
    "$@" > >(tee "$log") 2>&1 &
    local pid=$! started=$SECONDS size=-1 quiet_since=$SECONDS
    while kill -0 "$pid" 2>/dev/null; do
        local now_size
        now_size="$(stat -c %s "$log" 2>/dev/null || echo 0)"
        if (( now_size != size )); then
            size=$now_size
            quiet_since=$SECONDS
        fi
        local why=""
        if (( SECONDS - started >= limit )); then
            why="did not finish in $limit s"
        elif (( SECONDS - quiet_since >= silence )); then
            why="printed nothing for $silence s, $((SECONDS - started)) s in"
        fi
        if [[ -n "$why" ]]; then
            local tree report
            tree="$(coffer_descendants "$pid")"
            report="$(coffer_bounded_report "$what" "$why" "$log" $tree 2>&1)"
            kill -KILL $tree "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            rm -f "$log"
            report+=$'\n'"$what $why (a hang: its unfinished tests and threads are above)"
            echo "$report" >&2
            [[ -n "${COFFER_HANG_REPORTS:-}" ]] && echo "$report" >> "$COFFER_HANG_REPORTS"
            return 124
        fi
        sleep 1
    done
    local status=0
    wait "$pid" || status=$?
    rm -f "$log"
    return "$status"
}

# coffer_bounded, and once more if the pass hung: the two CI hangs of the registry suite on PostgreSQL (stops 27 and
# 31) never happened in 11 runs here, so a second hang in a row fails the run, one is reported at the end of the run.
coffer_bounded_again_if_hung() {
    local status=0
    coffer_bounded "$@" || status=$?
    (( status == 124 )) || return "$status"
    echo "== $2 hung: running it once more (its report is printed again at the end of the run)" >&2
    coffer_bounded "$@"
}

# Every process under `$1`, children first.
coffer_descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1"); do
        coffer_descendants "$child"
        echo "$child"
    done
}

# What a hung pass leaves to read, in few enough lines for the tail of a CI log: the tests it started and did not
# finish, the PostgreSQL backends that were doing something (a lock wait shows as "waiting"), and the threads of its
# test processes (among the PIDs after the first three arguments), each distinct stack once.
coffer_bounded_report() {
    local what="$1" why="$2" log="$3" process
    shift 3
    local here
    here="$(dirname "${BASH_SOURCE[0]}")"
    echo "== $what $why: the tests it started and did not finish" >&2
    python3 "$here/hang_report.py" tests < "$log" >&2 || true
    echo "== PostgreSQL backends not idle" >&2
    ps -eo etimes=,args= | grep -E 'postgres: .*(waiting|in transaction|SELECT|INSERT|UPDATE|DELETE|COMMIT|BEGIN)' \
        | grep -v grep | cut -c1-200 | head -15 >&2 || true
    for process in "$@"; do
        [[ "$(cat "/proc/$process/cmdline" 2>/dev/null | tr '\0' ' ')" == *.xctest* ]] || continue
        command -v gdb >/dev/null || continue
        echo "== $what: threads of test process $process" >&2
        gdb -p "$process" -batch -ex 'thread apply all bt 40' 2>/dev/null | python3 "$here/hang_report.py" threads >&2 || true
        # What the kernel says each thread waits in, should gdb be refused (no ptrace in a container).
        echo "== threads of $process by state and kernel wait: $(for task in /proc/"$process"/task/*; do
            echo "$(awk '{print $3}' "$task/stat" 2>/dev/null)/$(cat "$task/wchan" 2>/dev/null)"
        done | sort | uniq -c | sort -rn | head -8 | awk '{printf "%s x %s; ", $1, $2}')" >&2
        coffer_bounded_blocked_reads "$process" >&2
        echo "== children of $process that ended and were not waited for: $(ps -o pid=,args= --ppid "$process" -o stat= 2>/dev/null \
            | awk '$NF ~ /Z/' | cut -c1-80 | head -5 | tr '\n' ';')" >&2
    done
}

# The threads of `$1` blocked reading a pipe, each with the pipe and the other processes holding it open (a child that
# inherited a pipe's write end keeps its reader waiting for an end of file for ever).
coffer_bounded_blocked_reads() {
    local process="$1" task fd target holders shown=0
    for task in /proc/"$process"/task/*; do
        [[ "$(cat "$task/wchan" 2>/dev/null)" == *pipe_read* ]] || continue
        fd="$(awk '{print $2}' "$task/syscall" 2>/dev/null)"
        [[ -n "$fd" ]] || continue
        target="$(readlink "/proc/$process/fd/$((fd))" 2>/dev/null)"
        holders="$(for other in /proc/[0-9]*; do
            [[ "${other#/proc/}" == "$process" ]] && continue
            ls -l "$other/fd" 2>/dev/null | grep -q -F "$target" && echo "${other#/proc/} ($(tr '\0' ' ' < "$other/cmdline" | cut -c1-60))"
        done | head -3 | tr '\n' ';')"
        echo "== thread ${task##*/} reads fd $((fd)) ($target); also open in: ${holders:-no other process}"
        (( ++shown < 4 )) || break
    done
}
