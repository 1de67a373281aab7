"""Protocols the services depend on; implementations live in `engine.store` and friends."""
