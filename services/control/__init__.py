"""Control plane: the gRPC API product backends drive Parley with (personas, replicas, conversations,
interactions, events, webhooks). ``python -m services.control`` serves it on port 50060."""
