//! Event store on sqlx (SQLite and PostgreSQL): group-commit writer, hash chain, outbox, inbox, immutability triggers.
