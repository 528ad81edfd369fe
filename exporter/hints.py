"""What an Adobe refusal means and what to do about it: one hint per Adobe error code (Adobe's "Flow Service Error
Messages" page, and the gateway's codes), else per HTTP status. Pure: error messages, the landing page and
``check-config --online`` read these; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

SETUP = "docs/adobe-setup.md"


@dataclass(frozen=True, kw_only=True)
class Hint:
    """``problem`` names what is wrong in a few words (a table cell); ``advice`` says what to do (``{sandbox}`` is
    filled in)."""

    problem: str
    advice: str

    def text(self, sandbox: str = "") -> str:
        return self.advice.format(sandbox=sandbox or "?")


_SANDBOX_MISSING = Hint(
    problem="sandbox not found",
    advice=(
        "sandbox '{sandbox}' does not exist in this organization: check sandboxes[].name (lowercase, as Experience "
        "Platform's Sandboxes page shows it) and that adobe.org_id is the organization it is in"
    ),
)
_NO_PERMISSION = Hint(
    problem="no permission",
    advice=(
        "the credential may not read dataflows in sandbox '{sandbox}': its role needs this sandbox (Adobe's default "
        "role, Default production all access, covers the Production sandbox only) and the View Sources and View "
        f"Destinations permissions; only a system administrator can add an API credential to a role ({SETUP}, "
        "step 3)"
    ),
)
_FLOW_HIDDEN = Hint(
    problem="not found or hidden",
    advice=(
        "the flow does not exist in sandbox '{sandbox}', or an access label on it hides it from the credential's role "
        f"(Adobe answers both the same way): check the id, and the role's labels ({SETUP}, access labels)"
    ),
)
_TOKEN_REFUSED = Hint(
    problem="token refused",
    advice=(
        "Adobe refused a fresh token: is the Experience Platform API added to the Developer Console project of this "
        f"credential, and is adobe.org_id that project's organization? ({SETUP}, step 2)"
    ),
)
_API_KEY = Hint(
    problem="API key refused",
    advice=(
        f"adobe.client_id is not an API key Adobe knows for this service: copy the credential's Client ID ({SETUP})"
    ),
)
_ORG = Hint(
    problem="wrong organization",
    advice=(
        "the credential is not part of organization adobe.org_id: copy the Organization ID from the credential's page "
        f"in the Developer Console (on a multi-org account, pick the organization with the console's selector first; "
        f"{SETUP}, step 2)"
    ),
)

BY_CODE: dict[str, Hint] = {
    "2100-404": _SANDBOX_MISSING,
    "2101-404": _SANDBOX_MISSING,
    "2103-404": _SANDBOX_MISSING,
    "2118-403": _NO_PERMISSION,
    "2120-403": _NO_PERMISSION,
    "2121-403": _NO_PERMISSION,
    "1439-400": _FLOW_HIDDEN,
    "1439-404": _FLOW_HIDDEN,
    "1101-404": _FLOW_HIDDEN,
    "2000-401": _ORG,
    "403027": _ORG,
    "401013": _TOKEN_REFUSED,
    "403003": _API_KEY,
}
"""Adobe's codes, as their body names them (``FLOW-`` prefixes are dropped before the lookup)."""

BY_STATUS: dict[int, Hint] = {401: _TOKEN_REFUSED, 403: _NO_PERMISSION}


def hint_for(status: int, code: str | None) -> Hint | None:
    """The hint for an Adobe refusal: by its error code when Adobe gave a known one, else by its status."""
    if code:
        found = BY_CODE.get(code.upper().removeprefix("FLOW-"))
        if found is not None:
            return found
    return BY_STATUS.get(status)
