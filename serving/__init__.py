"""The serving runtime: config, predictors, data plane and protocol front ends."""
