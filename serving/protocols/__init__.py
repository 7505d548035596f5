"""Thin protocol front ends around the data plane: RESTful HTTP and gRPC."""
