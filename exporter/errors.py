"""The exporter's one exception tree.

Every error the package raises on purpose derives from :class:`ExporterError`. Third-party
exceptions (aiohttp, sqlite3, yaml) are translated at the module that meets them
(``raise ... from exc``), so callers catch these classes and nothing else. No message built
here ever contains a secret: callers pass status codes and error codes, never request bodies.

The tree (tests/test_structure.py checks that it is drawn as the classes are)::

    ExporterError
        ConfigError          the config (or a web config file): every problem, each with its path
        PayloadError         an answer that cannot be understood
            TooLargeError        over its size cap, as sent or inflated
            DuplicateKeyError    a JSON object naming one key twice
        StateError           the state file: corrupt, foreign, locked or not writable
        AuthError            IMS gave no token
        TransportError       no HTTP answer at all (timeout, connection), after retries
        ApiError             an HTTP error status, after retries where they apply
            RedirectError        a redirect, never followed
            NotFoundError        404: the flow, sandbox or page is not there
            ThrottledError       429, with Retry-After when Adobe sent it
            ServerError          5xx
"""

from __future__ import annotations


class ExporterError(Exception):
    """Base class of every error the exporter raises on purpose."""


class ConfigError(ExporterError):
    """The configuration is invalid; ``problems`` lists every problem with its path."""

    def __init__(self, problems: list[str] | tuple[str, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in self.problems))


class PayloadError(ExporterError):
    """An API answer could not be understood (malformed JSON, wrong shape, missing id)."""


class TooLargeError(PayloadError):
    """An answer is over its size cap, as sent or once inflated."""


class DuplicateKeyError(PayloadError):
    """A JSON object names one key twice: readers disagree on which value wins, so nothing may rely on it."""


class StateError(ExporterError):
    """The state file is corrupt, foreign, or from an incompatible version."""


class AuthError(ExporterError):
    """Adobe IMS refused or failed to issue an access token."""


class TransportError(ExporterError):
    """A request failed below HTTP (timeout, connection refused or reset) after all retries."""

    def __init__(self, endpoint: str, reason: str, detail: str = "") -> None:
        self.endpoint = endpoint
        self.reason = reason  # timeout or connection
        super().__init__(f"{endpoint}: {detail or reason}")


class ApiError(ExporterError):
    """The Flow Service answered with an HTTP error status (after retries where they apply)."""

    def __init__(self, endpoint: str, status: int, code: str | None = None, detail: str = "") -> None:
        self.endpoint = endpoint
        self.status = status
        self.code = code
        text = f"{endpoint}: HTTP {status}"
        if code:
            text += f" ({code})"
        if detail:
            text += f": {detail}"
        super().__init__(text)


class RedirectError(ApiError):
    """A 3xx: never followed, since every request carries a token (or, to IMS, the client secret)."""

    def __init__(self, endpoint: str, status: int, host: str) -> None:
        super().__init__(
            endpoint,
            status,
            None,
            f"redirect to {host} refused: requests carrying credentials "
            "never follow a redirect (check the configured URL)",
        )
        self.host = host


class NotFoundError(ApiError):
    """HTTP 404: the flow or run does not exist (any more)."""


class ThrottledError(ApiError):
    """HTTP 429 persisted through every retry."""


class ServerError(ApiError):
    """HTTP 5xx persisted through every retry."""
