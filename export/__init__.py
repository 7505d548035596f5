"""Model zoo and exporter: PaddleClas networks -> Paddle Serving's serving_server/serving_client layout."""
