"""The NATS JetStream runtime: micro endpoints for commands, a stream for events,
a KV bucket for state. It imports the core; the core never imports it."""
