#!/usr/bin/env python3
"""Independent check of the wire contract: validates every frozen event
snapshot (proto/tests/snapshots/<kind>.json) against its checked-in JSON Schema
(proto/schemas/<kind>.json) with the Python `jsonschema` package, so the
schemas are proved usable by a consumer that is not written in Rust.

Exit 0 when every snapshot validates, 1 otherwise."""

import json
import pathlib
import sys

try:
    import jsonschema
except ImportError:  # pragma: no cover - the setup script installs it
    sys.exit("validate-schemas: the Python package `jsonschema` is missing "
             "(scripts/services.sh installs it)")

root = pathlib.Path(__file__).resolve().parent.parent / "proto"
snapshots = sorted((root / "tests" / "snapshots").glob("*.json"))
failed = 0
for snap in snapshots:
    kind = snap.stem
    schema_path = root / "schemas" / f"{kind}.json"
    if not schema_path.exists():
        print(f"FAIL {kind}: no schema at {schema_path}")
        failed += 1
        continue
    schema = json.loads(schema_path.read_text())
    instance = json.loads(snap.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(instance), key=str)
    if errors:
        failed += 1
        for err in errors:
            print(f"FAIL {kind}: {err.message} at {list(err.absolute_path)}")
    # A schema that accepts anything would prove nothing: a wrong kind must fail.
    wrong = dict(instance, kind=kind + "-wrong")
    if validator_cls(schema).is_valid(wrong):
        failed += 1
        print(f"FAIL {kind}: the schema accepts an event of another kind")

if not snapshots:
    print("FAIL: no snapshots found")
    sys.exit(1)
passed = len(snapshots) - failed
print(f"schemas: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
