"""Authentication shared by REST and gRPC: API keys, Basic users and Bearer tokens."""
from .authenticator import ANONYMOUS, Authenticator

__all__ = ["ANONYMOUS", "Authenticator"]
