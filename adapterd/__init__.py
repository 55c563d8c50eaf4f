"""Generated protobuf and gRPC code for the adapterd API (`make protos`); never edit by hand."""
