//! Service kit: typed configuration, telemetry, trace propagation, health endpoints, graceful shutdown.
