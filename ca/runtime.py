"""Process wiring: from one :class:`Settings` to the engine, stores, KEK and issuance service."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from spiffe import TrustDomain
from sqlalchemy import Engine

from ca.cacerts import load_cacerts
from ca.core.authority import SigningAuthority, build_intermediate, build_root
from ca.core.csr_policy import TtlPolicy
from ca.core.errors import ConfigurationError
from ca.core.identity import parse_trust_domain
from ca.core.issuer import Issuer
from ca.core.kek import KeyEncryptionKey
from ca.core.keys import KeyType, generate_private_key, key_type_of
from ca.core.lifecycle import AuthorityRole, IntermediatePolicy
from ca.issuance import IssuanceService, utc_now
from ca.kek_file import create_kek, read_kek
from ca.settings import Settings
from ca.storage.authority_store import AuthorityStore, CaIdentity, NewAuthority, StepOutcome
from ca.storage.engine import make_engine
from ca.storage.ledger import Ledger
from ca.storage.server_settings import ServerSettings


@dataclass(frozen=True, slots=True)
class InitOutcome:
    """What ``ca init`` did."""

    identity: CaIdentity
    created: bool
    kek_created: Path | None
    signing_key_id: str

    def kek_notice(self) -> str | None:
        """What to tell the admin about a newly created KEK file (``None``: none was made)."""
        if self.kek_created is None:
            return None
        return (
            f"created key-encryption key {self.kek_created.resolve()} (mode 0600); "
            "back it up: without it the CA keys cannot be decrypted"
        )


class CaRuntime:
    """The CA's parts for one process, built lazily from ``settings``.

    Without ``create_database``, a missing SQLite file is not created (the commands that only
    read, or need an initialised CA, say it is not initialised instead).
    """

    def __init__(self, settings: Settings, *, create_database: bool = True) -> None:
        self.settings = settings
        self.create_database = create_database

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.db_url, create=self.create_database)

    @cached_property
    def authorities(self) -> AuthorityStore:
        return AuthorityStore(self.engine)

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.engine)

    @cached_property
    def server_settings(self) -> ServerSettings:
        return ServerSettings(self.engine)

    def kek(self) -> KeyEncryptionKey:
        return read_kek(self.settings.kek_file)

    def active_certificates(self, now: datetime) -> dict[str, int]:
        """Each authority's active certificates, as ``ca status`` and ``root status`` both show
        them: unexpired certificates issued by it or by an authority below it (a root counts
        its intermediates' certificates, like ``IN_USE`` and ``root retire``)."""
        lifecycle = self.authorities.lifecycle()
        by_issuer = self.ledger.active_counts_by_issuer(now)
        return {
            view.id: sum(by_issuer.get(member.id, 0) for member in lifecycle.family(view))
            for view in lifecycle.authorities
        }

    def ttl_policy(self) -> TtlPolicy:
        return TtlPolicy(default=self.settings.default_ttl, maximum=self.settings.max_ttl)

    def issuance_service(self) -> IssuanceService:
        """An issuance service signing with the active authority (decrypted with the KEK)."""
        identity = self.authorities.require_identity()
        signer = self.authorities.signing_authority(self.kek())
        issuer = Issuer(
            identity.trust_domain, signer, self.ttl_policy(), backdate=self.settings.backdate
        )
        return IssuanceService(issuer, self.ledger)

    def intermediate_policy(self) -> IntermediatePolicy:
        return IntermediatePolicy(
            prepare_at=self.settings.intermediate_prepare_at,
            activate_at=self.settings.intermediate_activate_at,
        )

    def prepare_root(
        self, *, from_dir: Path | None, actor: str, now: datetime | None = None
    ) -> StepOutcome:
        """``root prepare``: a new root and intermediate (or imported CA material) stored
        PREPARED, so the bundle carries them before they sign anything."""
        now = now or utc_now()
        identity = self.authorities.require_identity()
        if from_dir is not None:
            signer = load_cacerts(from_dir, now=now)
            rows = _authorities_of(signer)
        else:
            root, signer = self._generate(identity.trust_domain, now=now)
            rows = _authorities_of(signer, root_key=root.private_key)
        return self.authorities.prepare(self.kek(), rows, actor=actor, now=now)

    def rotate_intermediate(self, *, actor: str, now: datetime | None = None) -> StepOutcome | None:
        """The automatic intermediate rotation's next step, if one is due."""
        now = now or utc_now()
        trust_domain = self.authorities.require_identity().trust_domain

        def build(root: SigningAuthority) -> SigningAuthority:
            return build_intermediate(
                trust_domain,
                generate_private_key(key_type_of_authority(root)),
                root,
                now=now,
                ttl=self.settings.intermediate_ttl,
            )

        return self.authorities.rotate_intermediate(
            self.kek(), self.intermediate_policy(), build, actor=actor, now=now
        )

    def initialise(self, *, from_dir: Path | None, exist_ok: bool, actor: str) -> InitOutcome:
        """Create (or import) the CA unless this database already has one."""
        existing = self.authorities.identity()
        if existing is not None:
            if not exist_ok:
                raise ConfigurationError(
                    "already_initialised",
                    f"the CA for trust domain {existing.trust_domain.name} is already initialised "
                    "in this database (use --exist-ok to accept that)",
                )
            if existing.trust_domain.name != self.settings.trust_domain:
                raise ConfigurationError(
                    "trust_domain_mismatch",
                    f"this database holds the CA of trust domain {existing.trust_domain.name}, "
                    f"not {self.settings.trust_domain}",
                )
            signer = self.authorities.signing_authority(self.kek())
            return InitOutcome(existing, False, None, signer.key_id)
        trust_domain = parse_trust_domain(self.settings.trust_domain)
        now = utc_now()
        if from_dir is not None:
            signer = load_cacerts(from_dir, now=now)
            rows = _authorities_of(signer)
        else:
            root, signer = self._generate(trust_domain, now=now)
            rows = _authorities_of(signer, root_key=root.private_key)
        kek_path = self.settings.kek_file
        kek_created = None
        if kek_path.exists():
            kek = read_kek(kek_path)
        else:
            kek = create_kek(kek_path)
            kek_created = kek_path
        self.authorities.initialise(trust_domain, kek, rows, actor=actor, now=now)
        return InitOutcome(self.authorities.require_identity(), True, kek_created, signer.key_id)

    def _generate(
        self, trust_domain: TrustDomain, *, now: datetime
    ) -> tuple[SigningAuthority, SigningAuthority]:
        """A new root and an intermediate under it."""
        key_type = KeyType(self.settings.key_type)
        root = build_root(
            trust_domain, generate_private_key(key_type), now=now, ttl=self.settings.root_ttl
        )
        intermediate = build_intermediate(
            trust_domain,
            generate_private_key(key_type),
            root,
            now=now,
            ttl=self.settings.intermediate_ttl,
        )
        return root, intermediate


def _authorities_of(
    signer: SigningAuthority, root_key: CertificateIssuerPrivateKeyTypes | None = None
) -> list[NewAuthority]:
    """Rows for ``signer`` and every certificate above it; only the signer's key is held
    (plus the root's, ``root_key``, when meshca generated the root itself)."""
    if not signer.chain:
        return [NewAuthority(AuthorityRole.ROOT, signer.certificate, (), signer.private_key)]
    rows: list[NewAuthority] = []
    path = signer.chain_for_leaf
    for index in range(len(path) - 1, -1, -1):
        cert = path[index]
        above = path[index + 1 :]
        role = AuthorityRole.ROOT if index == len(path) - 1 else AuthorityRole.INTERMEDIATE
        key = signer.private_key if index == 0 else root_key if role is AuthorityRole.ROOT else None
        parent = rows[-1].id if rows else None
        rows.append(NewAuthority(role, cert, tuple(above), key, parent))
    return rows


def key_type_of_authority(authority: SigningAuthority) -> KeyType:
    """The key type of ``authority``'s own key: a new intermediate under it gets the same."""
    found = key_type_of(authority.certificate.public_key())
    return found if found is not None else KeyType.EC_P256
