//! The control database's schema: versioned migrations, applied by whichever node starts first
//! (under an advisory lock), never rolled back. A node refuses a schema newer than it knows.

use tokio_postgres::Client;

/// Migrations in order; the schema's version is how many have been applied.
const MIGRATIONS: &[&str] = &[
    // 1: nodes and their leases, reviews (compare-and-set on `version`; every write notifies
    // `phigate_reviews` at commit), fingerprint grants, elevations, API keys and token
    // revocations (every change notifies `phigate_credentials`).
    "CREATE TABLE phigate.nodes (
        node_id text PRIMARY KEY,
        instance text NOT NULL,
        started_at timestamptz NOT NULL,
        renewed_at timestamptz NOT NULL,
        lease_until timestamptz NOT NULL,
        pg_address text NOT NULL,
        http_address text,
        pid integer NOT NULL,
        version text NOT NULL
    );
    CREATE TABLE phigate.reviews (
        id text PRIMARY KEY,
        version bigint NOT NULL,
        status text NOT NULL,
        kind text NOT NULL,
        node_id text NOT NULL,
        instance text NOT NULL,
        run text,
        fingerprint text,
        expires_at timestamptz NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        body text NOT NULL
    );
    CREATE INDEX reviews_pending ON phigate.reviews (created_at) WHERE status = 'pending';
    CREATE INDEX reviews_updated ON phigate.reviews (updated_at);
    CREATE FUNCTION phigate.review_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('phigate_reviews', NEW.id);
        RETURN NULL;
    END $$;
    CREATE TRIGGER review_changed AFTER INSERT OR UPDATE ON phigate.reviews
        FOR EACH ROW EXECUTE FUNCTION phigate.review_changed();
    CREATE TABLE phigate.fingerprint_grants (
        issuer text NOT NULL,
        subject text NOT NULL,
        role text NOT NULL,
        rule text NOT NULL,
        fingerprint text NOT NULL,
        review text NOT NULL,
        until timestamptz NOT NULL,
        PRIMARY KEY (issuer, subject, role, rule, fingerprint)
    );
    CREATE TABLE phigate.elevations (
        issuer text NOT NULL,
        subject text NOT NULL,
        role text NOT NULL,
        review text NOT NULL,
        until timestamptz NOT NULL,
        PRIMARY KEY (issuer, subject, role)
    );
    CREATE TABLE phigate.api_keys (
        id text PRIMARY KEY,
        name text NOT NULL,
        subject text NOT NULL,
        roles text[] NOT NULL,
        created_at bigint NOT NULL,
        expires_at bigint NOT NULL,
        revoked_at bigint,
        secret_sha256 text NOT NULL
    );
    CREATE TABLE phigate.token_revocations (
        issuer text NOT NULL,
        subject text NOT NULL,
        revoked_at bigint NOT NULL,
        PRIMARY KEY (issuer, subject)
    );
    CREATE TABLE phigate.failed_logins (
        source inet PRIMARY KEY,
        failures integer NOT NULL,
        window_start timestamptz NOT NULL
    );
    CREATE FUNCTION phigate.credentials_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('phigate_credentials', '');
        RETURN NULL;
    END $$;
    CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OR DELETE ON phigate.api_keys
        FOR EACH STATEMENT EXECUTE FUNCTION phigate.credentials_changed();
    CREATE TRIGGER token_revocations_changed AFTER INSERT OR UPDATE OR DELETE
        ON phigate.token_revocations
        FOR EACH STATEMENT EXECUTE FUNCTION phigate.credentials_changed();",
];

/// The schema version this build writes.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// Any fixed number: the advisory lock the nodes migrate under.
const MIGRATION_LOCK: i64 = 0x7068_6967_6174_6531;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the control database's schema is version {found}, newer than this gateway knows ({VERSION}): upgrade this node")]
    Newer { found: i32 },
    #[error("cannot migrate the control database: {0}")]
    Database(String),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        MigrateError::Database(super::describe(&e))
    }
}

/// Brings the schema to [`VERSION`], each migration in the transaction that records it.
/// Returns the version found before.
pub async fn migrate(client: &mut Client) -> Result<i32, MigrateError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS phigate;
         CREATE TABLE IF NOT EXISTS phigate.schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM phigate.schema_version",
            &[],
        )
        .await?
        .get(0);
    if found > VERSION {
        return Err(MigrateError::Newer { found });
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO phigate.schema_version (version) VALUES ($1)",
            &[&(n as i32 + 1)],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(found)
}
