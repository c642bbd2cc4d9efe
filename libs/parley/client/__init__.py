"""Python SDK of the Parley control plane (``services.control``).

    from parley.client import ParleyClient          # or AsyncParleyClient for asyncio

    with ParleyClient("127.0.0.1:50060", api_key="pk_...") as parley:
        persona = parley.create_persona("Tutor", system_prompt="You teach French.", greeting="Bonjour!")
        replica = parley.create_replica_and_wait("Anna", "anna.jpg", progress=lambda f, m: print(f, m))
        conv = parley.create_conversation(persona.persona_id, replica.replica_id,
                                          callback_url="https://backend.example.com/parley-hook")
        print(conv.conversation_url)                 # open it to join
        parley.echo(conv.conversation_id, "Welcome!")
        for event in parley.events(conv.conversation_id):
            print(event.event_type, event.properties_json)

Return values are the ``parley.v1.control_pb2`` messages (typed by their ``.pyi`` stubs);
``to_dict`` turns one into plain JSON-friendly data. Errors are ``ParleyAPIError`` subclasses.
"""

from parley.client._common import (
    AuthenticationError,
    FailedPreconditionError,
    InvalidArgumentError,
    JobFailed,
    NotFoundError,
    Page,
    ParleyAPIError,
    to_dict,
)
from parley.client.aio import AsyncParleyClient
from parley.client.sync import ParleyClient
from parley.client.webhooks import WebhookSignatureError, verify_webhook

__all__ = [
    "AsyncParleyClient",
    "AuthenticationError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "JobFailed",
    "NotFoundError",
    "Page",
    "ParleyAPIError",
    "ParleyClient",
    "WebhookSignatureError",
    "to_dict",
    "verify_webhook",
]
