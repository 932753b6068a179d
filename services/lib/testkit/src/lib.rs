//! Test support: reach NATS and PostgreSQL, a fresh prefix and database per test.
