#!/usr/bin/env bash
# Makes PostgreSQL and NATS JetStream reachable for shcr's tests, and prints `export` lines:
#
#     eval "$(scripts/ensure-services.sh)"
#
# DATABASE_URL is an admin URL (database `postgres`) from which each test creates and drops its
# own database; NATS_URL names a server with JetStream. For each service, in this order:
#   1. the URL already in the environment, if it works;
#   2. the standard local port (127.0.0.1:5432, 127.0.0.1:4222), if it works;
#   3. a private server on a free loopback port, its data under
#      ${SHCR_SERVICES_DIR:-<repo>/target/services}, after installing the Debian package
#      (postgresql, nats-server) when its programs are missing.
# A second call finds the private servers running and reuses them.
# Messages go to stderr; stdout carries only the export lines.
set -euo pipefail
script_name=ensure-services
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

services_dir=${SHCR_SERVICES_DIR:-$repo/target/services}
readonly START_ATTEMPTS=5

# port_open HOST PORT — something accepts TCP connections there.
port_open() { timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null; }

# A loopback port nobody listens on, below Linux's ephemeral range (32768-60999) so that outgoing
# connections do not take it before the server binds it.
free_port() {
    local port _
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 12000))
        if ! port_open 127.0.0.1 "$port"; then
            echo "$port"
            return 0
        fi
    done
    die "found no free port on 127.0.0.1"
}

# mkdirs DIR... — folders that other users may pass through, whatever the caller's umask.
mkdirs() { (umask 022 && mkdir -p "$@"); }

# processes_in DIR — pids of processes working in DIR (a postmaster and its backends work in
# their data folder).
processes_in() {
    local proc
    for proc in /proc/[0-9]*; do
        if [[ $(readlink "$proc/cwd" 2>/dev/null) == "$1" ]]; then
            echo "${proc#/proc/}"
        fi
    done
}

# --- PostgreSQL ------------------------------------------------------------------------------

# pg_works URL — connects there and can create (and drop) a database, as the tests will.
pg_works() {
    local probe="shcr_probe_$$_$RANDOM"
    PGCONNECT_TIMEOUT=5 psql -X -q -w -v ON_ERROR_STOP=1 -d "$1" \
        -c "CREATE DATABASE $probe" -c "DROP DATABASE $probe" >/dev/null 2>&1
}

pg_url_on() { echo "postgres://postgres@127.0.0.1:$1/postgres"; }

# The folder for the private cluster. PostgreSQL refuses to run as root, so as root it runs as
# the OS user postgres, which must be able to reach the folder.
pg_dir() {
    local dir=$services_dir/postgres
    mkdirs "$dir"
    if ! is_root; then
        echo "$dir"
        return 0
    fi
    chown postgres:postgres "$dir"
    if runuser -u postgres -- test -w "$dir" -a -x "$dir"; then
        echo "$dir"
        return 0
    fi
    local blocked=$dir parent=$dir
    while [[ $parent != / ]]; do
        parent=$(dirname "$parent")
        runuser -u postgres -- test -x "$parent" || blocked=$parent
    done
    local why
    why="PostgreSQL runs as the OS user postgres (it refuses root), which cannot enter $blocked ($(stat -c '%A, owner %U' "$blocked"))"
    [[ -z ${SHCR_SERVICES_DIR:-} ]] ||
        die "$why: choose a SHCR_SERVICES_DIR that user can reach, or let it pass with: chmod o+x $blocked"
    local fallback
    fallback=/tmp/shcr-services-$(printf '%s' "$repo" | cksum | cut -d' ' -f1)/postgres
    log "$why; keeping the private cluster in $fallback instead"
    mkdirs "$fallback"
    chmod 755 "$(dirname "$fallback")"
    chown postgres:postgres "$fallback"
    echo "$fallback"
}

# Starts (or finds running) a private cluster; prints its admin URL.
private_postgres() {
    local bindir dir
    bindir=$(ensure_pg_server "a private PostgreSQL for the tests")
    dir=$(pg_dir)
    local pgdata=$dir/pgdata socket=$dir/socket log_file=$dir/postgres.log
    local run_as=()
    if is_root; then
        run_as=(runuser -u postgres --)
    fi
    # give FILE... — to the user the server runs as.
    give() { if is_root; then chown postgres:postgres "$@"; fi; }
    # as_server COMMAND... — as that user, from a folder it can enter.
    as_server() { (cd / && "${run_as[@]}" "$@"); }

    mkdirs "$socket"
    give "$socket"
    if [[ -e $log_file ]]; then give "$log_file"; fi

    # An existing cluster needs the programs of its own major version.
    if [[ -f $pgdata/PG_VERSION ]]; then
        local version
        version=$(<"$pgdata/PG_VERSION")
        if has_pg_server "/usr/lib/postgresql/$version/bin"; then
            bindir=/usr/lib/postgresql/$version/bin
        fi
    fi
    local major
    major=$("$bindir/pg_ctl" --version | sed -E 's/.*\(PostgreSQL\) ([0-9]+).*/\1/')

    local pid_file=$pgdata/postmaster.pid port
    if [[ -f $pid_file ]]; then
        port=$(sed -n 4p "$pid_file")
        if [[ $port =~ ^[0-9]+$ ]] && pg_works "$(pg_url_on "$port")"; then
            log "PostgreSQL: reusing the private server on 127.0.0.1:$port (data in $dir)"
            pg_url_on "$port"
            return 0
        fi
        local real pid
        real=$(readlink -f "$pgdata")
        pid=$(sed -n 1p "$pid_file")
        if [[ $pid =~ ^[0-9]+$ && $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$real" ]]; then
            log "PostgreSQL: the private server (pid $pid) does not answer; stopping it"
            as_server "$bindir/pg_ctl" stop -D "$pgdata" -m fast -w -t 60 >&2 || true
        fi
        # What a killed server leaves: its backends exit soon after their postmaster.
        local deadline=$((SECONDS + 15))
        while [[ -n $(processes_in "$real") ]]; do
            ((SECONDS < deadline)) ||
                die "processes of an earlier private PostgreSQL still run in $pgdata: $(processes_in "$real" | xargs); stop them and run this again"
            sleep 0.1
        done
        # Nothing runs there: the pid and socket lock files are stale (a dead postmaster can
        # linger as a zombie where nothing reaps orphans, and PostgreSQL takes that for alive).
        rm -f "$pid_file" "$socket"/.s.PGSQL.*
    fi

    local include="include_if_exists = 'shcr.conf'"
    if ! grep -qxF "$include" "$pgdata/postgresql.conf" 2>/dev/null ||
        [[ $(<"$pgdata/PG_VERSION") != "$major" ]]; then
        # Test data is disposable: an incomplete cluster or one of another version is made anew.
        rm -rf "$pgdata"
        log "PostgreSQL: creating a private cluster in $pgdata (PostgreSQL $major)"
        if ! as_server "$bindir/initdb" -D "$pgdata" -U postgres --auth=trust --encoding=UTF8 \
            --no-locale >"$dir/initdb.log" 2>&1; then
            tail -n 30 "$dir/initdb.log" >&2
            die "initdb failed (whole output in $dir/initdb.log)"
        fi
        printf '%s\n' '# Written by shcr: a private test cluster, reached on loopback only.' \
            'local all all              trust' \
            'host  all all 127.0.0.1/32 trust' >"$pgdata/pg_hba.conf"
        printf '\n# shcr: settings of this private cluster, rewritten at every start.\n%s\n' \
            "$include" >>"$pgdata/postgresql.conf"
        give "$pgdata/pg_hba.conf" "$pgdata/postgresql.conf"
    fi

    local socket_setting="'${socket//\'/\'\'}'"
    if ((${#socket} + 16 > 107)); then
        log "PostgreSQL: the socket folder path is too long for a unix socket; TCP only"
        socket_setting="''"
    fi
    local attempt log_start
    for ((attempt = 1; attempt <= START_ATTEMPTS; attempt++)); do
        port=$(free_port)
        cat >"$pgdata/shcr.conf" <<EOF
# Written by scripts/ensure-services.sh at every start; edits here are overwritten.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = $socket_setting
max_connections = 200
shared_buffers = '128MB'
# Test data is thrown away: crash safety is traded for speed here (never in shcr demo).
fsync = off
synchronous_commit = off
full_page_writes = off
log_line_prefix = '%m [%p] '
timezone = 'UTC'
EOF
        give "$pgdata/shcr.conf"
        log_start=$(stat -c %s "$log_file" 2>/dev/null || echo 0)
        if as_server "$bindir/pg_ctl" start -D "$pgdata" -l "$log_file" -w -t 120 >&2; then
            pg_works "$(pg_url_on "$port")" ||
                die "the private PostgreSQL on port $port started but cannot create a database; see $log_file"
            log "PostgreSQL: started a private server on 127.0.0.1:$port (data in $dir)"
            pg_url_on "$port"
            return 0
        fi
        if tail -c "+$((log_start + 1))" "$log_file" 2>/dev/null | grep -q 'Address already in use' &&
            ((attempt < START_ATTEMPTS)); then
            log "PostgreSQL: port $port was taken meanwhile; trying another"
            continue
        fi
        log "PostgreSQL did not start; last lines of $log_file:"
        tail -n 30 "$log_file" >&2 || true
        exit 1
    done
}

ensure_postgres() {
    if ! command -v psql >/dev/null; then
        apt_install "probing PostgreSQL needs psql" postgresql-client
    fi
    if [[ -n ${DATABASE_URL:-} ]]; then
        if pg_works "$DATABASE_URL"; then
            log "PostgreSQL: using DATABASE_URL from the environment"
            echo "$DATABASE_URL"
            return 0
        fi
        log "warning: DATABASE_URL is set, but it cannot be used to create a database there; looking further"
    fi
    if pg_works "$(pg_url_on 5432)"; then
        log "PostgreSQL: using the server on 127.0.0.1:5432"
        pg_url_on 5432
        return 0
    fi
    private_postgres
}

# --- NATS ------------------------------------------------------------------------------------

# nats_works HOST PORT — a NATS server there greets with JetStream enabled.
nats_works() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2" && IFS= read -r -t 3 line <&3 &&
        [[ $line == INFO* && $line == *"\"jetstream\":true"* ]]' _ "$1" "$2" 2>/dev/null
}

# nats_host_port URL — "HOST PORT" of the first server in a NATS URL list.
nats_host_port() {
    local server=${1%%,*}
    server=${server#*://}
    server=${server##*@}
    server=${server%%/*}
    local host=$server port=4222
    if [[ $server =~ ^(.*):([0-9]+)$ ]]; then
        host=${BASH_REMATCH[1]}
        port=${BASH_REMATCH[2]}
    fi
    host=${host#[}
    host=${host%]}
    echo "$host $port"
}

# Starts (or finds running) a private NATS server with JetStream; prints its URL.
private_nats() {
    local bin
    bin=$(command -v nats-server || echo /usr/sbin/nats-server)
    if [[ ! -x $bin ]]; then
        apt_install "a private NATS server for the tests" nats-server
        bin=$(command -v nats-server || echo /usr/sbin/nats-server)
        [[ -x $bin ]] || die "nats-server is installed but not found"
    fi
    local dir=$services_dir/nats port pid
    mkdirs "$dir/jetstream"
    if [[ -f $dir/port ]] && port=$(<"$dir/port") && nats_works 127.0.0.1 "$port"; then
        log "NATS: reusing the private server on 127.0.0.1:$port (data in $dir)"
        echo "nats://127.0.0.1:$port"
        return 0
    fi
    # Ours, but not answering: stop it before starting another on the same store.
    if [[ -f $dir/nats.pid ]] && pid=$(<"$dir/nats.pid") && [[ $pid =~ ^[0-9]+$ ]] &&
        [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$(readlink -f "$bin")" ]]; then
        log "NATS: the private server (pid $pid) does not answer; stopping it"
        kill "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 15))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    fi
    local attempt out_start log_start
    for ((attempt = 1; attempt <= START_ATTEMPTS; attempt++)); do
        port=$(free_port)
        out_start=$(stat -c %s "$dir/nats.out" 2>/dev/null || echo 0)
        log_start=$(stat -c %s "$dir/nats.log" 2>/dev/null || echo 0)
        # Its own session, and no handle on our stdout: it outlives this script and the
        # caller's $(...) does not wait for it.
        setsid "$bin" -js -a 127.0.0.1 -p "$port" -sd "$dir/jetstream" \
            -l "$dir/nats.log" -P "$dir/nats.pid" </dev/null >>"$dir/nats.out" 2>&1 &
        pid=$!
        local deadline=$((SECONDS + 30))
        while ! nats_works 127.0.0.1 "$port"; do
            kill -0 "$pid" 2>/dev/null || break
            ((SECONDS < deadline)) || die "NATS on port $port did not answer within 30 s; see $dir/nats.log"
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$port" >"$dir/port"
            log "NATS: started a private server on 127.0.0.1:$port (data in $dir)"
            echo "nats://127.0.0.1:$port"
            return 0
        fi
        if { tail -c "+$((out_start + 1))" "$dir/nats.out" 2>/dev/null
            tail -c "+$((log_start + 1))" "$dir/nats.log" 2>/dev/null; } |
            grep -qi 'address already in use' && ((attempt < START_ATTEMPTS)); then
            log "NATS: port $port was taken meanwhile; trying another"
            continue
        fi
        log "NATS did not start; last lines of its output:"
        tail -n 20 "$dir/nats.out" "$dir/nats.log" >&2 2>/dev/null || true
        exit 1
    done
}

ensure_nats() {
    if [[ -n ${NATS_URL:-} ]]; then
        local host port
        read -r host port <<<"$(nats_host_port "$NATS_URL")"
        if nats_works "$host" "$port"; then
            log "NATS: using NATS_URL from the environment"
            echo "$NATS_URL"
            return 0
        fi
        log "warning: NATS_URL is set, but no NATS server with JetStream answers at $host:$port; looking further"
    fi
    if nats_works 127.0.0.1 4222; then
        log "NATS: using the server on 127.0.0.1:4222"
        echo "nats://127.0.0.1:4222"
        return 0
    fi
    private_nats
}

database_url=$(ensure_postgres)
nats_url=$(ensure_nats)
printf 'export DATABASE_URL=%q\n' "$database_url"
printf 'export NATS_URL=%q\n' "$nats_url"
