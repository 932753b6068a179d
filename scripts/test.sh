#!/usr/bin/env bash
# The whole test suite, as the README's test command: make sure NATS and
# PostgreSQL run (installing them on a fresh Debian machine), check the wire
# schemas with an independent validator, then run every test of the workspace
# with cargo-nextest against the real servers.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh
python3 scripts/validate-schemas.py
cargo test --workspace --doc --quiet
cargo nextest run --workspace --profile "${NEXTEST_PROFILE:-default}" "$@"
