"""One module per CLI command; each exposes `validate(cfg)` and a Hydra `main`."""
