"""Single sign-on with OpenID Connect (issue #15): the provider, its tokens and the user they name.

mozilla-django-oidc runs the authorization-code flow (state, nonce, PKCE, the token and
userinfo requests); this module gives it what it cannot know by itself:

- the provider's endpoints, read from the issuer's discovery document when a sign-in first
  needs them, not at import: a provider that is down must not stop the site from starting,
  and sign-in then gets a page saying so (chat/oidc_views.py). The document is cached;
- a stricter id token check than the library's (it checks neither audience nor issuer,
  and an expired token escapes it as an unhandled error): signature by a key of the
  issuer's, `iss`, `aud`, `exp`, `iat` and the nonce, each failure a `SignInRefused`;
- who the token names. The pair (issuer, `sub`) is the identity, kept in
  `SignInIdentity`; a username or an e-mail address never links a sign-in to an
  existing account, so a provider's user cannot take over a local account (or another
  provider's user) that happens to share its name. A new user gets the provider's
  `preferred_username` when it is free, else that name with a suffix made from the
  identity;
- what the claims make of the user on every sign-in: e-mail and name, staff and superuser
  from CHAT_OIDC_STAFF_GROUPS / CHAT_OIDC_SUPERUSER_GROUPS, and the Django groups named
  in CHAT_OIDC_MIRROR_GROUPS (budgets come from those, chat/budgets.py).

The library speaks HTTP through requests; the discovery request goes through it too, so
one set of errors (requests.RequestException) means "the provider could not be reached".
"""

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import jwt
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings

from chat.models import SignInIdentity

log = logging.getLogger(__name__)

BACKEND = "chat.oidc.SignInBackend"
# Seconds for each request to the provider; a sign-in waits on it with the browser.
TIMEOUT = 10
# The discovery document rarely changes; an hour bounds how long a changed one goes unseen.
DISCOVERY_CACHE_SECONDS = 3600
# Clock difference between this server and the provider that `exp` and `iat` tolerate.
LEEWAY_SECONDS = 60
# Signature algorithms with a public key: never `none`, nor HS*, whose key is the client
# secret (anyone holding it could mint tokens).
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
# What mozilla-django-oidc reads from settings, fixed here instead of in every site's settings.
LIBRARY_SETTINGS = {
    "OIDC_AUTHENTICATION_CALLBACK_URL": "chat_accounts:oidc_callback",
    "OIDC_USE_PKCE": True,
    "OIDC_USE_NONCE": True,
    "OIDC_STORE_ID_TOKEN": True,  # the id_token_hint for the provider's sign-out
    "OIDC_TIMEOUT": TIMEOUT,
    "OIDC_VERIFY_KID": True,
}
USERNAME_CHARS = re.compile(r"[^\w.@+-]")


class ProviderUnavailable(Exception):
    """The provider could not be reached, or answered with something that is not OpenID Connect."""


class SignInRefused(Exception):
    """The provider's answer does not sign this user in; the message says why, for the page."""


def enabled() -> bool:
    return bool(settings.CHAT_OIDC_ISSUER and settings.CHAT_OIDC_CLIENT_ID)


def library_setting(name: str, *default):
    if name in LIBRARY_SETTINGS:
        return LIBRARY_SETTINGS[name]
    if name == "OIDC_RP_SCOPES":
        return settings.CHAT_OIDC_SCOPES
    return import_from_settings(name, *default)


def names(text: str) -> set[str]:
    """A comma-separated setting's names."""
    return {name.strip() for name in text.split(",") if name.strip()}


# -- the provider ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str = ""
    end_session_endpoint: str = ""


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def provider() -> Provider:
    """The configured provider's endpoints, from its discovery document (cached)."""
    issuer = settings.CHAT_OIDC_ISSUER
    key = "chat:oidc-discovery:" + hashlib.sha256(issuer.encode()).hexdigest()
    document = cache.get(key)
    if document is None:
        document = fetch_discovery(issuer)
        cache.set(key, document, DISCOVERY_CACHE_SECONDS)
    return Provider(**document)


def fetch_discovery(issuer: str) -> dict[str, str]:
    url = discovery_url(issuer)
    try:
        response = requests.get(url, timeout=TIMEOUT)
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as exc:
        log.warning("Could not read the sign-in provider's discovery document %s: %s", url, exc)
        raise ProviderUnavailable(f"its discovery document could not be read ({type(exc).__name__})") from exc
    if not isinstance(document, dict):
        raise ProviderUnavailable("its discovery document is not a JSON object")
    # OpenID Connect Discovery 1.0, section 4.3: the issuer must be the one asked for.
    if document.get("issuer", "").rstrip("/") != issuer.rstrip("/"):
        log.warning("%s names issuer %r, not CHAT_OIDC_ISSUER %r", url, document.get("issuer"), issuer)
        raise ProviderUnavailable("its discovery document names another issuer than CHAT_OIDC_ISSUER")
    required = ("authorization_endpoint", "token_endpoint", "jwks_uri")
    missing = [name for name in required if not document.get(name)]
    if missing:
        raise ProviderUnavailable(f"its discovery document lacks {', '.join(missing)}")
    return {
        "issuer": document["issuer"],
        **{name: document[name] for name in required},
        "userinfo_endpoint": document.get("userinfo_endpoint") or "",
        "end_session_endpoint": document.get("end_session_endpoint") or "",
    }


# -- claims to the user ------------------------------------------------------------------------
def claim(claims: dict, path: str):
    """A claim by name, or inside another by a dotted path (Keycloak's `realm_access.roles`)."""
    if path in claims:
        return claims[path]
    value = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def groups_in(claims: dict, path: str) -> set[str]:
    """The user's groups at the provider: a list of names, or one name."""
    value = claim(claims, path)
    if isinstance(value, str):
        return {value}
    if isinstance(value, list | tuple):
        return {str(item) for item in value if isinstance(item, str | int)}
    return set()


def username_for(claims: dict, issuer: str, taken: Callable[[str], bool]) -> str:
    """A free username for a new user: the provider's preferred one when nobody has it.

    Otherwise the same name with a suffix from a hash of (issuer, sub), longer until free:
    a local `alice` and the provider's `alice` stay two people, and the second one is told
    apart by something stable, not by the order of sign-ins.
    """
    wanted = claims.get("preferred_username") or (claims.get("email") or "").split("@")[0] or "user"
    base = USERNAME_CHARS.sub("", str(wanted))[:100] or "user"
    if not taken(base):
        return base
    digest = hashlib.sha256(f"{issuer}\n{claims['sub']}".encode()).hexdigest()
    for length in (6, 10, 16, 64):
        candidate = f"{base}-{digest[:length]}"
        if not taken(candidate):
            return candidate
    raise SignInRefused("No free username could be made for this account; ask an admin.")


def mirrored(groups: set[str], mirror: str) -> set[str]:
    """The provider groups that CHAT_OIDC_MIRROR_GROUPS mirrors into Django groups."""
    if mirror.strip() == "*":
        return {group for group in groups if len(group) <= Group._meta.get_field("name").max_length}
    return groups & names(mirror)


def update_user(user, claims: dict) -> None:
    """Make the user what the claims say: details, staff, superuser and mirrored groups.

    A setting left empty means that part is not managed by sign-in: staff set it by hand.
    """
    groups = groups_in(claims, settings.CHAT_OIDC_GROUPS_CLAIM)
    if claims.get("email"):
        user.email = claims["email"]
    user.first_name = str(claims.get("given_name") or "")[:150]
    user.last_name = str(claims.get("family_name") or "")[:150]
    if settings.CHAT_OIDC_STAFF_GROUPS:
        user.is_staff = bool(groups & names(settings.CHAT_OIDC_STAFF_GROUPS))
    if settings.CHAT_OIDC_SUPERUSER_GROUPS:
        user.is_superuser = bool(groups & names(settings.CHAT_OIDC_SUPERUSER_GROUPS))
        user.is_staff = user.is_staff or user.is_superuser
    user.save()
    mirror = settings.CHAT_OIDC_MIRROR_GROUPS
    if not mirror:
        return
    wanted = mirrored(groups, mirror)
    if mirror.strip() == "*":
        managed = set(user.groups.values_list("name", flat=True)) | wanted
    else:
        managed = names(mirror)
    keep = user.groups.exclude(name__in=managed)  # groups staff gave by hand stay
    user.groups.set([*keep, *(Group.objects.get_or_create(name=name)[0] for name in sorted(wanted))])


# -- the authentication backend ----------------------------------------------------------------
class SignInBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend with the provider found lazily and the checks above.

    Django builds a backend for every request of a signed-in user (get_user), so building
    one must not touch the network: the endpoints are properties read during a sign-in.
    """

    get_settings = staticmethod(library_setting)

    def __init__(self, *args, **kwargs) -> None:
        self.UserModel = get_user_model()

    OIDC_RP_CLIENT_ID = property(lambda self: settings.CHAT_OIDC_CLIENT_ID)
    OIDC_RP_CLIENT_SECRET = property(lambda self: settings.CHAT_OIDC_CLIENT_SECRET)
    OIDC_OP_TOKEN_ENDPOINT = property(lambda self: provider().token_endpoint)
    OIDC_OP_USER_ENDPOINT = property(lambda self: provider().userinfo_endpoint)
    OIDC_OP_JWKS_ENDPOINT = property(lambda self: provider().jwks_uri)

    def get_user(self, user_id):
        # ModelBackend's: refuses inactive users, as chat/signout.py's session re-check expects.
        return ModelBackend.get_user(self, user_id)

    def get_token(self, payload: dict) -> dict:
        try:
            return super().get_token(payload)
        except requests.HTTPError as exc:
            # The body may echo the code; the status is enough for the log.
            log.warning("The sign-in provider refused the code: HTTP %s", exc.response.status_code)
            raise SignInRefused("The sign-in provider refused this sign-in; start again.") from None

    def verify_token(self, token: str, **kwargs) -> dict:
        """The id token's claims, once its signature, issuer, audience, times and nonce hold."""
        if not token:
            raise SignInRefused("The sign-in provider sent no id token.")
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in SIGNING_ALGORITHMS:
                raise SignInRefused(
                    f"The id token is signed with {header.get('alg')!r}, which is not accepted."
                )
            key = self.retrieve_matching_jwk(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                audience=settings.CHAT_OIDC_CLIENT_ID,
                issuer=provider().issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise SignInRefused("The id token has expired; start the sign-in again.") from None
        except jwt.InvalidSignatureError:
            log.warning("An id token's signature did not verify")
            raise SignInRefused("The id token's signature is not the provider's.") from None
        except (jwt.InvalidTokenError, jwt.PyJWKError) as exc:
            log.warning("An id token was refused: %s", exc)
            raise SignInRefused(f"The id token was refused ({type(exc).__name__}).") from None
        except requests.RequestException as exc:
            raise ProviderUnavailable(f"its signing keys could not be read ({type(exc).__name__})") from exc
        nonce = kwargs.get("nonce")
        if nonce is not None and claims.get("nonce") != nonce:
            raise SignInRefused("The id token is not for this sign-in (nonce); start again.")
        return claims

    def retrieve_matching_jwk(self, token: str):
        try:
            return super().retrieve_matching_jwk(token)
        except requests.HTTPError as exc:
            raise ProviderUnavailable(
                f"its signing keys could not be read ({exc.response.status_code})"
            ) from exc
        except Exception as exc:  # SuspiciousOperation (no such key), KeyError: a key we cannot use
            if isinstance(exc, requests.RequestException):
                raise
            raise SignInRefused("The id token is signed with a key the provider does not publish.") from None

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict):
        claims = dict(payload)
        if self.OIDC_OP_USER_ENDPOINT:
            try:
                info = self.get_userinfo(access_token, id_token, payload)
            except requests.RequestException as exc:
                raise ProviderUnavailable(f"its userinfo endpoint failed ({type(exc).__name__})") from exc
            # OpenID Connect Core 1.0, 5.3.2: userinfo about someone else must not be used.
            if info.get("sub") != payload["sub"]:
                raise SignInRefused("The provider's user information is about another account.")
            claims.update(info)
        return sign_in_user(provider().issuer, claims)


def sign_in_user(issuer: str, claims: dict):
    """The user for (issuer, sub): found, or created on first sign-in; updated from the claims."""
    user_model = get_user_model()
    subject = str(claims["sub"])
    with transaction.atomic():
        identity = (
            SignInIdentity.objects.select_for_update()
            .select_related("user")
            .filter(issuer=issuer, subject=subject)
            .first()
        )
        if identity is None:
            username = username_for(
                claims, issuer, lambda name: user_model.objects.filter(username__iexact=name).exists()
            )
            user = user_model(username=username)
            user.set_unusable_password()
            user.save()
            identity = SignInIdentity.objects.create(user=user, issuer=issuer, subject=subject)
            log.info("Created user %s on first sign-in through %s", username, issuer)
        user = identity.user
        if not user.is_active:
            raise SignInRefused("This account is disabled; ask an admin.")
        update_user(user, claims)
        identity.last_sign_in = timezone.now()
        identity.save(update_fields=["last_sign_in"])
    return user
