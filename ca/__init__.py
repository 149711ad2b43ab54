"""meshca's certificate authority: a pure core (``ca.core``), storage adapters (``ca.storage``),
the issuance service that joins them (``ca.service``) and the admin CLI (``ca.cli``)."""
