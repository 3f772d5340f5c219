"""What a hung test pass leaves to read, short enough for the tail of a CI log (tools/lib/bounded.sh).

    python3 hang_report.py threads < gdb-output   # each distinct stack once, with how many threads share it
    python3 hang_report.py tests < test-log       # the tests started and not finished

Stacks are cut to the frames that say what a thread waits for: addresses, arguments, libc's, libdispatch's and the
Swift runtime's frames are dropped, Swift names demangled, and threads with the same stack counted once.
"""

import re
import shutil
import subprocess
import sys

# Frames that say only how a thread waits or runs, not what for: libc, pthreads, libdispatch, the Swift runtime.
PLUMBING = re.compile(
    r"^(_|syscall|futex|do_futex_wait|pthread_|start_thread|clone|epoll_wait|select|poll|ppoll|nanosleep|"
    r"clock_nanosleep|read|write|swift::|swift_|std::|dispatch_|CFRunLoop|\?\?)"
)
# Demangled Swift frames that are glue.
GLUE = re.compile(r"^(thunk|reabstraction|partial apply|protocol witness|merged|outlined|implicit closure|"
                  r"specialized thunk|\(extension in Foundation\)|Swift\.|NIOConcurrencyHelpers)")


def frames(block):
    names = []
    for line in block:
        m = re.match(r"#\d+\s+(?:0x[0-9a-f]+ in )?(\S+)", line)
        if m:
            names.append(m.group(1))
    return names


def demangled(names):
    """`swift demangle --simplified` over every Swift name at once, when the toolchain is on PATH."""
    mangled = sorted({n for n in names if n.startswith("$s")})
    if not mangled or not shutil.which("swift"):
        return {}
    try:
        out = subprocess.run(["swift", "demangle", "--simplified"], input="\n".join(mangled), capture_output=True,
                             text=True, timeout=60).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(zip(mangled, out)) if len(out) == len(mangled) else {}


def threads():
    blocks, current = [], None
    for line in sys.stdin:
        line = line.rstrip("\n")
        if line.startswith("Thread "):
            current = []
            blocks.append(current)
        elif current is not None and line.startswith("#"):
            current.append(line)
    stacks = [frames(block) for block in blocks]
    names = demangled([n for stack in stacks for n in stack])
    groups = {}
    for stack in stacks:
        kept = []
        for raw in stack:
            if PLUMBING.match(raw):
                continue
            name = re.sub(r"\s+", " ", names.get(raw, raw))
            if not GLUE.match(name):
                kept.append(name[:100])
        if not kept:
            kept = ["idle: " + next((n for n in stack if n.startswith(("_dispatch_worker", "epoll_wait", "__GI_epoll"))),
                                    stack[0] if stack else "?")]
        key = (stack[0] if stack else "?",) + tuple(kept[:6])
        groups[key] = groups.get(key, 0) + 1
    print(f"  {len(blocks)} threads; each distinct stack once (top frame: then the frames that say what for)")
    for key, count in sorted(groups.items(), key=lambda item: -item[1])[:16]:
        print(f"  {count} x {key[0][:40]}: " + " < ".join(key[1:]))


def tests():
    started, ended = [], set()
    for line in sys.stdin:
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        # Swift Testing announces each case of a parameterized test but says only of the test that it passed.
        m = re.search(r"Test (?!case )(.+?) started\.", line)
        if m:
            started.append(m.group(1))
            continue
        m = re.search(r"Test (.+?)(?: with \d+ test cases?)? (?:passed|failed|skipped)", line)
        if m:
            ended.add(m.group(1))
    unfinished = [name for name in started if name not in ended and name != "run"]
    for name in unfinished[:25]:
        print("  still running:", name)
    if len(unfinished) > 25:
        print(f"  ... and {len(unfinished) - 25} more")


{"threads": threads, "tests": tests}[sys.argv[1]]()
