"""Load scenarios (Locust), their end-to-end check, and the benchmark."""
