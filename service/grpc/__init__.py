"""The gRPC transport: server assembly, interceptors, converters and thin servicers."""
