//! NATS JetStream plumbing: streams, publishing with headers, pull-consumer loop with inbox, dead letters, request/reply commands.
