# Shared set-up for tools/demo, tools/test and the benchmarks: install what is missing, build.
# Sourced, not run. Everything installs into the system (apt, as root) or into the repo (.venv).

COFFER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# Debian packages the project needs: libsodium (crypto), SQLite (registry), OpenBLAS (training), pkg-config, age and GNU time (benchmarks).
coffer_apt_packages=(libsodium-dev libsqlite3-dev libopenblas-dev libssl3 pkg-config age time python3-venv openssl libcurl4 curl)
# What the scale-out tests and benchmarks start on loopback: an OCI registry (docker-registry, with skopeo and htpasswd
# for its clients and Basic auth), nginx in front of replicas, and PostgreSQL.
coffer_scaleout_apt_packages=(docker-registry skopeo apache2-utils nginx-light postgresql)
# What the web interface's browser tests drive (tools/interop/test_web.py): Debian's Chromium and its chromedriver, so
# Selenium never downloads a driver.
coffer_browser_apt_packages=(chromium chromium-driver)

# Installs the project's packages and any named after them (e.g. "${coffer_scaleout_apt_packages[@]}").
coffer_install_system_packages() {
    local missing=()
    for package in "${coffer_apt_packages[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ]; then
        echo "installing: ${missing[*]}" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    else
        echo "missing Debian packages: ${missing[*]}" >&2
        echo "install them with: sudo apt-get install ${missing[*]}" >&2
        return 1
    fi
}

# A project-local virtualenv with the interop libraries from PyPI (tools/interop/requirements.txt).
coffer_python_venv() {
    local venv="$COFFER_ROOT/.venv"
    local requirements="$COFFER_ROOT/tools/interop/requirements.txt"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv" >&2
    fi
    if ! cmp -s "$requirements" "$venv/.requirements" 2>/dev/null; then
        "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements" >&2
        cp "$requirements" "$venv/.requirements"
    fi
    echo "$venv/bin/python"
}

coffer_build() {
    local configuration="${1:-debug}"
    local flags=()
    # A release binary carries the Swift runtime and Foundation (statically linked): the dynamic loader's symbol
    # lookups were a third of what `coffer --version` cost (11.0 ms -> 6.8 ms elapsed, perf stat -r 40, same run).
    # Nothing it loads is beside it, so no $ORIGIN run path, and coffer-run is then linked as a static PIE (Package.swift):
    # glibc's start refuses to relocate a static PIE that has a run path.
    [ "$configuration" = release ] && flags+=(--static-swift-stdlib --disable-local-rpath)
    # Every module, dependencies included, calls a concrete generic type's metadata accessor instead of instantiating
    # it from its mangled name: each first instantiation then scanned all ~12,800 protocol conformance records for the
    # conformances it needs. A 1 MiB push 31.1 -> 27.3 ms and 30.6 -> 27.1 ms, pull 27.6 -> 24.0 and 26.3 -> 23.1 ms,
    # `--version` 6.6 -> 5.8 ms (medians of 30 alternated runs each, agent identity, 2026-12-04); 0.4% more code.
    [ "$configuration" = release ] && flags+=(-Xswiftc -Xfrontend -Xswiftc -disable-concrete-type-metadata-mangled-name-accessors)
    # coffer-run, the runner's launcher (docs/FORMAT.md), goes beside coffer: it runs the coffer next to it.
    (cd "$COFFER_ROOT" && if [ "$configuration" = release ]; then export COFFER_LAUNCHER_PIE=1; fi \
        && swift build -c "$configuration" --product coffer "${flags[@]}" >&2 \
        && swift build -c "$configuration" --product coffer-run "${flags[@]}" >&2)
    echo "$COFFER_ROOT/.build/$configuration/coffer"
}
