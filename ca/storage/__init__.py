"""Storage adapters: SQLAlchemy models, the issuance ledger and the CA authority store."""
