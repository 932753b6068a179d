#!/usr/bin/env bash
# The whole test suite, as the README's test command: make sure NATS and
# PostgreSQL run (installing them on a fresh Debian machine), check the wire
# schemas with an independent validator, then run every test of the workspace
# with cargo-nextest against the real servers. Before nextest (whose summary
# closes the run), the web UI's end-to-end test drives Debian's headless
# Chromium against `gradeflow up --demo` (tests/e2e; GRADEFLOW_E2E=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh
python3 scripts/validate-schemas.py
cargo test --workspace --doc --quiet
if [ "${GRADEFLOW_E2E:-1}" != 0 ]; then
    bash scripts/services.sh browser
    # The same build nextest runs next (so nothing is compiled twice); it
    # leaves the gradeflow binary the e2e test starts.
    cargo test --workspace --no-run --quiet
    (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
    GRADEFLOW_BIN="${CARGO_TARGET_DIR:-target}/debug/gradeflow" node tests/e2e/run.mjs
fi
cargo nextest run --workspace --profile "${NEXTEST_PROFILE:-default}" "$@"
