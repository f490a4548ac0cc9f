"""The registry's database schema, as numbered migrations.

``MIGRATIONS[n]`` upgrades a database from version ``n`` to ``n + 1``. A new database runs
them all; an old one runs only the missing ones, in one transaction each. Never edit a
released migration: append a new one. :func:`common.db.migrations.upgrade_schema` runs
them. A statement that differs between SQLite and PostgreSQL (a trigger) is a mapping from
the dialect's name to its text.
"""

from __future__ import annotations

MIGRATIONS: list[list[str | dict[str, str]]] = [
    # 0 -> 1: the first schema.
    [
        """CREATE TABLE users (
            username TEXT PRIMARY KEY,
            display_name TEXT NOT NULL,
            email TEXT NOT NULL,
            attributes TEXT NOT NULL,
            is_admin INTEGER NOT NULL,
            password_hash TEXT,
            password_login INTEGER NOT NULL,
            created_at {BIGINT} NOT NULL,
            updated_at {BIGINT} NOT NULL,
            record_seq {BIGINT} NOT NULL,
            record_signed_at {BIGINT} NOT NULL,
            record_signature {BLOB} NOT NULL
        )""",
        """CREATE TABLE addresses (
            username TEXT PRIMARY KEY REFERENCES users(username) ON DELETE CASCADE,
            presence TEXT NOT NULL,
            endpoints TEXT NOT NULL,
            expires_at {BIGINT} NOT NULL,
            seq {BIGINT} NOT NULL,
            signed_at {BIGINT} NOT NULL,
            signature {BLOB} NOT NULL
        )""",
        "CREATE INDEX addresses_expiry ON addresses (expires_at)",
        """CREATE TABLE certificates (
            serial TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL UNIQUE,
            username TEXT NOT NULL,
            origin TEXT NOT NULL,
            not_before {BIGINT} NOT NULL,
            not_after {BIGINT} NOT NULL,
            issued_at {BIGINT} NOT NULL,
            revoked_at {BIGINT},
            revocation_reason TEXT,
            der {BLOB} NOT NULL
        )""",
        "CREATE INDEX certificates_by_user ON certificates (username, issued_at)",
        "CREATE INDEX certificates_revoked ON certificates (revoked_at)",
        """CREATE TABLE pkcs12_files (
            id {ID_PK},
            username TEXT NOT NULL,
            label TEXT NOT NULL,
            origin TEXT NOT NULL,
            certificate_serial TEXT,
            created_at {BIGINT} NOT NULL,
            data {BLOB} NOT NULL
        )""",
        "CREATE INDEX pkcs12_by_user ON pkcs12_files (username)",
        """CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value {BIGINT} NOT NULL
        )""",
        "INSERT INTO counters (name, value) VALUES ('crl_number', 0)",
        "INSERT INTO counters (name, value) VALUES ('revocations', 0)",
        """CREATE TABLE crls (
            issuer TEXT PRIMARY KEY,
            crl_number {BIGINT} NOT NULL,
            revocations {BIGINT} NOT NULL,
            next_update {BIGINT} NOT NULL,
            der {BLOB} NOT NULL
        )""",
    ],
    # 1 -> 2: a counter of everything that may end sessions (revocations, password and
    # password-login changes, administrator changes, deleted users), which registry
    # processes sharing the database watch; and a password version that only a new
    # password changes (not a rehash of the same password with stronger parameters).
    [
        "INSERT INTO counters (name, value) VALUES ('security_events', 0)",
        "ALTER TABLE users ADD COLUMN password_version {BIGINT} NOT NULL DEFAULT 0",
    ],
    # 2 -> 3: a partial index of the address records that still list addresses, so the
    # periodic sweep of expired ones reads those only (not every offline user).
    [
        "CREATE INDEX addresses_live ON addresses (expires_at)"
        " WHERE endpoints <> '[]' OR presence <> 'offline'",
    ],
    # 3 -> 4: serial numbers are unique per issuer only. Certificates are keyed by their
    # fingerprint; a serial is unique among the certificates this registry's CA issued
    # (a partial unique index), so uploaded certificates of other issuers may share a
    # serial with each other or with ours.
    [
        """CREATE TABLE certificates_v4 (
            fingerprint TEXT PRIMARY KEY,
            serial TEXT NOT NULL,
            username TEXT NOT NULL,
            origin TEXT NOT NULL,
            not_before {BIGINT} NOT NULL,
            not_after {BIGINT} NOT NULL,
            issued_at {BIGINT} NOT NULL,
            revoked_at {BIGINT},
            revocation_reason TEXT,
            der {BLOB} NOT NULL
        )""",
        "INSERT INTO certificates_v4 (fingerprint, serial, username, origin, not_before, not_after,"
        " issued_at, revoked_at, revocation_reason, der)"
        " SELECT fingerprint, serial, username, origin, not_before, not_after, issued_at, revoked_at,"
        " revocation_reason, der FROM certificates",
        "DROP TABLE certificates",
        "ALTER TABLE certificates_v4 RENAME TO certificates",
        "CREATE UNIQUE INDEX certificates_issued_serial ON certificates (serial) WHERE origin = 'issued'",
        "CREATE INDEX certificates_by_user ON certificates (username, issued_at)",
        "CREATE INDEX certificates_revoked ON certificates (revoked_at)",
    ],
    # 4 -> 5: a change log of the address records. Every insert, update and delete of a
    # row of ``addresses``, by any process or tool, appends the user's name (and the new
    # record's sequence number; none for a delete) in the same transaction, so registry
    # processes sharing the database forget exactly the cached look-up answers that
    # changed. The sweep prunes old rows; ``address_changes_pruned`` is the highest id
    # pruned (a process that had not read that far drops every cached answer). On
    # PostgreSQL the trigger also notifies the channel ``irp_addresses``.
    [
        """CREATE TABLE address_changes (
            id {ID_PK},
            username TEXT NOT NULL,
            seq {BIGINT}
        )""",
        "INSERT INTO counters (name, value) VALUES ('address_changes_pruned', 0)",
        {
            "sqlite": "CREATE TRIGGER addresses_inserted AFTER INSERT ON addresses BEGIN"
            " INSERT INTO address_changes (username, seq) VALUES (NEW.username, NEW.seq); END",
            "postgresql": """CREATE FUNCTION irp_address_changed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP <> 'INSERT' AND (TG_OP = 'DELETE' OR OLD.username <> NEW.username) THEN
                    INSERT INTO address_changes (username, seq) VALUES (OLD.username, NULL);
                    PERFORM pg_notify('irp_addresses', OLD.username);
                END IF;
                IF TG_OP <> 'DELETE' THEN
                    INSERT INTO address_changes (username, seq) VALUES (NEW.username, NEW.seq);
                    PERFORM pg_notify('irp_addresses', NEW.username || ' ' || NEW.seq);
                END IF;
                RETURN NULL;
            END
            $$""",
        },
        {
            "sqlite": "CREATE TRIGGER addresses_updated AFTER UPDATE ON addresses BEGIN"
            " INSERT INTO address_changes (username, seq) SELECT OLD.username, NULL"
            " WHERE OLD.username <> NEW.username;"
            " INSERT INTO address_changes (username, seq) VALUES (NEW.username, NEW.seq); END",
            "postgresql": "CREATE TRIGGER addresses_changed AFTER INSERT OR UPDATE OR DELETE ON addresses"
            " FOR EACH ROW EXECUTE FUNCTION irp_address_changed()",
        },
        {
            "sqlite": "CREATE TRIGGER addresses_deleted AFTER DELETE ON addresses BEGIN"
            " INSERT INTO address_changes (username, seq) VALUES (OLD.username, NULL); END",
        },
    ],
    # 5 -> 6: sixid (issue 13). ``sixid_records`` holds each ID's current signed record
    # (what the registry signed, as served) with its sequence number, kept until
    # ``keep_until`` (after expiry too, so an old registration cannot be replayed) and then
    # swept; ``sixid_allowed`` is the allow list of the ``listed`` policy. Every insert and
    # update of a record appends the ID and its new sequence number to ``sixid_changes``
    # (pruned like ``address_changes``; ``sixid_changes_pruned`` is the highest id pruned),
    # which registry processes sharing the database follow to tell their watchers; on
    # PostgreSQL the trigger also notifies the channel ``sixid_changes`` ("ID SEQ"). The
    # counter ``sixid_records`` counts the rows (the server's limit of IDs held).
    [
        """CREATE TABLE sixid_records (
            sixid TEXT PRIMARY KEY,
            seq {BIGINT} NOT NULL,
            signed_at {BIGINT} NOT NULL,
            expires_at {BIGINT} NOT NULL,
            keep_until {BIGINT} NOT NULL,
            owner TEXT NOT NULL,
            record {BLOB} NOT NULL
        )""",
        "CREATE INDEX sixid_records_keep_until ON sixid_records (keep_until)",
        """CREATE TABLE sixid_allowed (
            sixid TEXT PRIMARY KEY,
            note TEXT NOT NULL,
            added_at {BIGINT} NOT NULL,
            added_by TEXT NOT NULL
        )""",
        """CREATE TABLE sixid_changes (
            id {ID_PK},
            sixid TEXT NOT NULL,
            seq {BIGINT} NOT NULL
        )""",
        "INSERT INTO counters (name, value) VALUES ('sixid_changes_pruned', 0)",
        "INSERT INTO counters (name, value) VALUES ('sixid_records', 0)",
        {
            "sqlite": "CREATE TRIGGER sixid_records_inserted AFTER INSERT ON sixid_records BEGIN"
            " INSERT INTO sixid_changes (sixid, seq) VALUES (NEW.sixid, NEW.seq);"
            " UPDATE counters SET value = value + 1 WHERE name = 'sixid_records'; END",
            "postgresql": """CREATE FUNCTION sixid_record_changed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'DELETE' THEN
                    UPDATE counters SET value = value - 1 WHERE name = 'sixid_records';
                    RETURN NULL;
                END IF;
                IF TG_OP = 'INSERT' THEN
                    UPDATE counters SET value = value + 1 WHERE name = 'sixid_records';
                END IF;
                INSERT INTO sixid_changes (sixid, seq) VALUES (NEW.sixid, NEW.seq);
                PERFORM pg_notify('sixid_changes', NEW.sixid || ' ' || NEW.seq);
                RETURN NULL;
            END
            $$""",
        },
        {
            "sqlite": "CREATE TRIGGER sixid_records_updated AFTER UPDATE ON sixid_records BEGIN"
            " INSERT INTO sixid_changes (sixid, seq) VALUES (NEW.sixid, NEW.seq); END",
            "postgresql": "CREATE TRIGGER sixid_records_changed AFTER INSERT OR UPDATE OR DELETE ON sixid_records"
            " FOR EACH ROW EXECUTE FUNCTION sixid_record_changed()",
        },
        {
            "sqlite": "CREATE TRIGGER sixid_records_deleted AFTER DELETE ON sixid_records BEGIN"
            " UPDATE counters SET value = value - 1 WHERE name = 'sixid_records'; END",
        },
    ],
    # 6 -> 7: issue 14. ``registry_facts`` holds facts about the domain that every
    # process must agree on (``ca_root_fingerprint``: the SHA-256 fingerprint, 64
    # lowercase hex digits, of the domain's root CA, written by the first process that
    # creates or loads a CA for this database). ``audit_log`` is the tamper-evident audit
    # trail: entries numbered 1, 2, ... without gaps, each with the SHA-384 hash chaining it
    # to the one before; the counter ``audit_head`` (the last entry's id) is locked by
    # every append so processes sharing the database extend one chain.
    # ``audit_checkpoints`` are signatures by the registry's record-signing key over the
    # chain's hash at an entry, with the DER certificate of the key that signed.
    [
        """CREATE TABLE registry_facts (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
        """CREATE TABLE audit_log (
            id {BIGINT} PRIMARY KEY,
            at {BIGINT} NOT NULL,
            event TEXT NOT NULL,
            outcome TEXT NOT NULL,
            actor TEXT NOT NULL,
            subject TEXT NOT NULL,
            address TEXT NOT NULL,
            details TEXT NOT NULL,
            hash {BLOB} NOT NULL
        )""",
        "CREATE INDEX audit_log_by_event ON audit_log (event, id)",
        "CREATE INDEX audit_log_by_actor ON audit_log (actor, id)",
        "CREATE INDEX audit_log_by_subject ON audit_log (subject, id)",
        "CREATE INDEX audit_log_by_time ON audit_log (at)",
        """CREATE TABLE audit_checkpoints (
            entry_id {BIGINT} PRIMARY KEY,
            at {BIGINT} NOT NULL,
            hash {BLOB} NOT NULL,
            signature {BLOB} NOT NULL,
            certificate {BLOB} NOT NULL
        )""",
        "INSERT INTO counters (name, value) VALUES ('audit_head', 0)",
    ],
]

#: The version a fully upgraded database has.
LATEST_VERSION = len(MIGRATIONS)
