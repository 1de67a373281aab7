"""The dispatcher: task groups, the concurrency limiter, the state tracker and the steps."""
