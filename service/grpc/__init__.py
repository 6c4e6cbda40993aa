"""gRPC transport (grpc.aio) over the same engine, endpoints and credentials as REST."""
