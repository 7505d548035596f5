"""Thin wire adapters around the data plane: pipeline HTTP and gRPC, the model server's baidu_std/HTTP port and gRPC,
health, and the brpc client channel remote ops call model servers with."""
