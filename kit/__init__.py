"""`serving-kit`: one console command over the kit's tools (export, serve, model-server, predict, bench, ...)."""
