"""End-to-end tests: real Flower processes on 127.0.0.1."""
