#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for Coffer's tests, benchmarks and campaigns: install (apt, as root), initdb in a
# temporary directory as an unprivileged user, start on a free loopback port with scram-sha-256 password
# authentication and optional TLS (a self-signed CA and a server certificate), stop and remove.
#
# Sourced (functions coffer_pg_*) or run: tools/lib/postgres.sh install | start DIR [--tls] [--durable] [--watch PID] |
# restart DIR | stop DIR
#
# After `start DIR`, DIR holds:
#   data/              the cluster (PGDATA), owned by the server's user, mode 0700
#   run/               its Unix socket (the superuser connects there, by peer authentication)
#   server.log         the server's log
#   pgpass             "127.0.0.1:PORT:*:coffer:PASSWORD" and the same for localhost, mode 0600
#   tls/ca.crt         with --tls: the CA to pass as sslrootcert (server.crt names IP 127.0.0.1 and DNS localhost)
#   env                KEY=VALUE lines: COFFER_PG_URL (postgres://coffer@127.0.0.1:PORT/postgres), PGPASSFILE,
#                      COFFER_PG_PORT, COFFER_PG_USER, COFFER_PG_DATA, COFFER_PG_SOCKET_DIR, COFFER_PG_BINDIR,
#                      COFFER_PG_RUN_AS, COFFER_PG_CA (empty without --tls)
# The role `coffer` has a random password, may create databases and may CHECKPOINT (pg_checkpoint); the superuser
# `postgres` is reachable only through the socket in run/, by the server's own user or root (peer authentication).
#
# The server runs as the invoking user, or, when that is root (PostgreSQL refuses to run as root), as the system user
# coffer-pg, created when absent. With --watch PID, a detached watchdog stops and removes the cluster once process
# PID is gone, so a test process that is killed leaves no server behind.

COFFER_PG_SERVER_USER="${COFFER_PG_SERVER_USER:-coffer-pg}"

# The directory holding initdb, pg_ctl and postgres: $COFFER_PG_BINDIR, else Debian's newest /usr/lib/postgresql/N/bin.
coffer_pg_bindir() {
    if [ -n "${COFFER_PG_BINDIR:-}" ]; then
        [ -x "$COFFER_PG_BINDIR/initdb" ] && { echo "$COFFER_PG_BINDIR"; return 0; }
        echo "COFFER_PG_BINDIR=$COFFER_PG_BINDIR holds no initdb" >&2
        return 1
    fi
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4,4 -n -r); do
        [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && [ -x "$dir/pg_ctl" ] && { echo "$dir"; return 0; }
    done
    return 1
}

# Installs Debian's postgresql when its binaries are missing (as root), else says how to.
coffer_pg_install() {
    coffer_pg_bindir >/dev/null 2>&1 && return 0
    if [ "$(id -u)" -eq 0 ]; then
        echo "installing: postgresql" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 || return 1
        # Debian's package creates and starts a system cluster; ours are private, so leave it as Debian set it up.
        coffer_pg_bindir >/dev/null
    else
        echo "PostgreSQL server binaries not found: install them with 'sudo apt-get install postgresql' (tools/test does it when run as root)" >&2
        return 1
    fi
}

# The user the server runs as: the invoking user, or coffer-pg (created if absent) when that is root.
coffer_pg_server_user() {
    if [ "$(id -u)" -ne 0 ]; then
        id -un
        return 0
    fi
    if ! id "$COFFER_PG_SERVER_USER" >/dev/null 2>&1; then
        # Two test processes may race to create it: whichever loses finds it there.
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
            --comment "Coffer test PostgreSQL clusters" "$COFFER_PG_SERVER_USER" >/dev/null 2>&1 ||
            id "$COFFER_PG_SERVER_USER" >/dev/null 2>&1 || {
            echo "cannot create the system user $COFFER_PG_SERVER_USER to run PostgreSQL" >&2
            return 1
        }
    fi
    echo "$COFFER_PG_SERVER_USER"
}

# Runs a command as the server's user (directly when that is us).
coffer_pg_as() {
    local user="$1"
    shift
    if [ "$(id -un)" = "$user" ]; then
        "$@"
    else
        setpriv --reuid="$user" --regid="$user" --init-groups --inh-caps=-all -- "$@"
    fi
}

# A TCP port on 127.0.0.1 that nothing listens on right now (the server may still lose a race for it: start retries).
coffer_pg_free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
    else
        echo $((20000 + RANDOM % 40000))
    fi
}

# A self-signed CA and a server certificate for 127.0.0.1 and localhost, in DIR/tls.
coffer_pg_make_certificates() {
    local dir="$1/tls" user="$2"
    mkdir -p "$dir"
    (
        set -e
        cd "$dir"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=Coffer test CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout ca.key -out ca.crt 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
            -keyout server.key -out server.csr 2>/dev/null
        printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
            "subjectAltName=IP:127.0.0.1,DNS:localhost" >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext \
            -out server.crt 2>/dev/null
        rm -f server.csr server.ext ca.srl ca.key
        chmod 0600 server.key
        chmod 0644 ca.crt server.crt
    ) || return 1
    chown "$user:" "$dir/server.key" "$dir/server.crt"
}

# Starts a cluster in DIR (created if needed, must be empty). Prints nothing on stdout; DIR/env says where it is.
coffer_pg_start() {
    local root="" tls=0 watch="" durable=0
    while [ $# -gt 0 ]; do
        case "$1" in
        --tls) tls=1 ;;
        --durable) durable=1 ;;
        --watch) watch="$2"; shift ;;
        *) root="$1" ;;
        esac
        shift
    done
    [ -n "$root" ] || { echo "usage: coffer_pg_start DIR [--tls] [--durable] [--watch PID]" >&2; return 2; }
    local bindir user
    bindir="$(coffer_pg_bindir)" || {
        echo "PostgreSQL server binaries not found: run tools/lib/postgres.sh install (as root), or apt-get install postgresql" >&2
        return 1
    }
    user="$(coffer_pg_server_user)" || return 1
    mkdir -p "$root" && root="$(cd "$root" && pwd)" || return 1
    if [ -n "$(ls -A "$root" 2>/dev/null)" ]; then
        echo "$root is not empty" >&2
        return 1
    fi
    mkdir -p "$root/run"
    chown "$user:" "$root" "$root/run"
    chmod 0700 "$root" "$root/run"

    local password
    password="$(openssl rand -hex 24)" || return 1
    # initdb reads the superuser's password from a file; the superuser logs in by peer authentication only, so this
    # password is never used, but initdb insists on one when asked for scram-sha-256 on host connections.
    local pwfile="$root/run/initdb-password"
    openssl rand -hex 24 >"$pwfile"
    chown "$user:" "$pwfile"
    chmod 0600 "$pwfile"
    if ! coffer_pg_as "$user" "$bindir/initdb" -D "$root/data" -U postgres --pwfile="$pwfile" --auth-local=peer \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 --no-instructions >"$root/initdb.log" 2>&1; then
        echo "initdb failed (see $root/initdb.log): $(tail -n 1 "$root/initdb.log")" >&2
        return 1
    fi
    rm -f "$pwfile"

    if [ "$tls" -eq 1 ]; then
        coffer_pg_make_certificates "$root" "$user" || { echo "openssl could not make the test certificates" >&2; return 1; }
    fi
    # Peer authentication maps both the server's user and root to the superuser, on the socket only.
    cat >"$root/data/pg_hba.conf" <<EOF
local all postgres peer map=coffer_admin
host  all all 127.0.0.0/8 scram-sha-256
host  all all ::1/128     scram-sha-256
EOF
    printf 'coffer_admin %s postgres\ncoffer_admin root postgres\n' "$user" >"$root/data/pg_ident.conf"
    # Test settings: durability off (a test cluster never outlives a crash) unless --durable (benchmarks, which compare
    # it with SQLite's synchronous commits), room for many parallel tests' pools.
    cat >>"$root/data/postgresql.conf" <<EOF

# Coffer test cluster (tools/lib/postgres.sh)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$root/run'
unix_socket_permissions = 0700
password_encryption = 'scram-sha-256'
max_connections = 300
shared_buffers = 64MB
fsync = $([ "$durable" -eq 1 ] && echo on || echo off)
synchronous_commit = $([ "$durable" -eq 1 ] && echo on || echo off)
full_page_writes = $([ "$durable" -eq 1 ] && echo on || echo off)
log_min_messages = warning
log_connections = off
# Keep WAL segments past checkpoints: the erasure test looks for erased values in pg_wal/ (as a backup would hold them).
wal_keep_size = 512MB
EOF
    if [ "$tls" -eq 1 ]; then
        cat >>"$root/data/postgresql.conf" <<EOF
ssl = on
ssl_cert_file = '$root/tls/server.crt'
ssl_key_file = '$root/tls/server.key'
EOF
    fi
    chown "$user:" "$root/data/pg_hba.conf" "$root/data/pg_ident.conf" "$root/data/postgresql.conf"

    local port attempt started=0
    for attempt in 1 2 3 4 5; do
        port="$(coffer_pg_free_port)"
        if coffer_pg_as "$user" "$bindir/pg_ctl" -D "$root/data" -l "$root/server.log" -w -t 60 -s \
            -o "-p $port" start >/dev/null 2>&1; then
            started=1
            break
        fi
        grep -q "could not bind\|Address already in use" "$root/server.log" 2>/dev/null || break
    done
    if [ "$started" -ne 1 ]; then
        echo "PostgreSQL did not start (see $root/server.log): $(tail -n 1 "$root/server.log" 2>/dev/null)" >&2
        return 1
    fi

    local sql
    sql="CREATE ROLE coffer LOGIN CREATEDB PASSWORD '$password'; GRANT pg_checkpoint TO coffer;"
    if ! "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$root/run" -p "$port" -U postgres -d postgres -c "$sql" \
        >/dev/null 2>"$root/psql.log"; then
        echo "could not create the role coffer: $(tail -n 1 "$root/psql.log")" >&2
        coffer_pg_stop "$root"
        return 1
    fi
    (
        umask 077
        printf '127.0.0.1:%s:*:coffer:%s\nlocalhost:%s:*:coffer:%s\n' "$port" "$password" "$port" "$password" >"$root/pgpass"
    )
    chmod 0600 "$root/pgpass"
    {
        echo "COFFER_PG_URL=postgres://coffer@127.0.0.1:$port/postgres"
        echo "PGPASSFILE=$root/pgpass"
        echo "COFFER_PG_PORT=$port"
        echo "COFFER_PG_USER=coffer"
        echo "COFFER_PG_DATA=$root/data"
        echo "COFFER_PG_SOCKET_DIR=$root/run"
        echo "COFFER_PG_BINDIR=$bindir"
        echo "COFFER_PG_RUN_AS=$user"
        if [ "$tls" -eq 1 ]; then echo "COFFER_PG_CA=$root/tls/ca.crt"; else echo "COFFER_PG_CA="; fi
    } >"$root/env"

    if [ -n "$watch" ]; then
        # Detached, with no inherited descriptors (a caller reading our stdout to its end must not wait for it).
        setsid bash -c '
            while kill -0 "$1" 2>/dev/null && [ -d "$2/data" ]; do sleep 1; done
            source "$3"; coffer_pg_stop "$2"
        ' coffer-pg-watchdog "$watch" "$root" "${BASH_SOURCE[0]}" </dev/null >/dev/null 2>&1 &
    fi
}

# Runs SQL as the superuser of the cluster in DIR (over its socket).
coffer_pg_psql() {
    local root="$1"
    shift
    # shellcheck disable=SC1091
    local port bindir
    port="$(sed -n 's/^COFFER_PG_PORT=//p' "$root/env")"
    bindir="$(sed -n 's/^COFFER_PG_BINDIR=//p' "$root/env")"
    "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$root/run" -p "$port" -U postgres -d postgres "$@"
}

# Restarts the server of the cluster in DIR (fast shutdown: every session is cut, as when PostgreSQL fails over or
# is upgraded) with the options it was started with; returns once it accepts connections again.
coffer_pg_restart() {
    local root="$1" bindir user
    bindir="$(sed -n 's/^COFFER_PG_BINDIR=//p' "$root/env")"
    user="$(stat -c %U "$root/data")"
    coffer_pg_as "$user" "$bindir/pg_ctl" -D "$root/data" -l "$root/server.log" -m fast -w -t 60 -s restart >/dev/null
}

# Stops the cluster in DIR (fast shutdown: sessions are ended) and removes DIR.
coffer_pg_stop() {
    local root="$1"
    [ -n "$root" ] && [ -d "$root" ] || return 0
    if [ -f "$root/data/postmaster.pid" ]; then
        local bindir user
        bindir="$(sed -n 's/^COFFER_PG_BINDIR=//p' "$root/env" 2>/dev/null)"
        [ -n "$bindir" ] || bindir="$(coffer_pg_bindir)"
        user="$(stat -c %U "$root/data")"
        coffer_pg_as "$user" "$bindir/pg_ctl" -D "$root/data" -m fast -w -t 30 -s stop >/dev/null 2>&1 ||
            coffer_pg_as "$user" "$bindir/pg_ctl" -D "$root/data" -m immediate -w -t 30 -s stop >/dev/null 2>&1
    fi
    rm -rf "$root"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -uo pipefail
    command="${1:-}"
    shift || true
    case "$command" in
    install) coffer_pg_install ;;
    start) coffer_pg_start "$@" ;;
    stop) coffer_pg_stop "$@" ;;
    restart) coffer_pg_restart "$@" ;;
    psql) coffer_pg_psql "$@" ;;
    *)
        echo "usage: $0 install | start DIR [--tls] [--watch PID] | restart DIR | stop DIR | psql DIR [psql arguments]" >&2
        exit 2
        ;;
    esac
fi
