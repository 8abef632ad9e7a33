//! `phigate check`: load and validate a config file (errors and warnings with their line and
//! column), and read the SAML identity providers' metadata files; with `--connect`, also reach
//! what it names: the database's tables and columns in grants and `[[phi]]`, the certificate
//! files, the OIDC issuers, the SAML metadata URLs.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::config::Config;

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The config file to check.
    #[arg(long, short, env = "PHIGATE_CONFIG")]
    config: PathBuf,
    /// Also connect: to the database (tables and columns named in grants and [[phi]] must
    /// exist), load the certificate files, and ask every OIDC issuer for its discovery
    /// document (or its jwks_uri), and fetch every `idp_metadata_url`.
    #[arg(long)]
    connect: bool,
}

pub fn check(args: CheckArgs) -> anyhow::Result<()> {
    let (config, warnings) = Config::load_with_warnings(&args.config)?;
    // Where the database password lives must be readable here, as for `phigate serve`.
    config
        .upstream
        .resolve_password()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    if let Some(cluster) = &config.cluster {
        cluster
            .resolve_password()
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    }
    // A SAML metadata file the gateway would refuse to start with (unreadable, no signing
    // certificate, ...).
    for s in &config.auth.saml {
        crate::auth::saml::SamlIssuer::new(s)
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", args.config.display()))?;
    }
    for w in &warnings {
        println!("warning: {w}");
    }
    if args.connect {
        let problems = super::runtime()?.block_on(connect(&config));
        if !problems.is_empty() {
            // A problem may quote what a server sent (a database's error): escaped.
            for p in &problems {
                println!("error: {}", crate::text::display(p));
            }
            anyhow::bail!(
                "{}: {} found by --connect",
                args.config.display(),
                plural(problems.len(), "problem", "problems")
            );
        }
    }
    println!(
        "{}: ok{}",
        args.config.display(),
        match warnings.len() {
            0 => String::new(),
            n => format!(" ({})", plural(n, "warning", "warnings")),
        }
    );
    println!("{}", config.audit.guarantee());
    if let Some(cluster) = &config.cluster {
        println!(
            "A cluster node ({}): reviews, API keys and token revocations are shared through \
             the control database {} (docs/cluster.md).",
            cluster
                .node_id
                .as_deref()
                .map(|id| format!("node id {id}"))
                .unwrap_or_else(|| "node id kept in its data directory".into()),
            control_place(&cluster.control_database)
        );
    }
    Ok(())
}

/// Where the control database is, for people: host, port and database of its URL (never a
/// password, if one was put there).
fn control_place(url: &str) -> String {
    use std::str::FromStr;
    let Ok(c) = tokio_postgres::Config::from_str(url) else {
        return "(unparsable URL)".into();
    };
    let host = match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    crate::text::display(&format!(
        "{host}:{port}/{}",
        c.get_dbname().unwrap_or_default()
    ))
    .into_owned()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    super::plural(n as u64, one, many)
}

/// Everything `--connect` found wrong, in words.
async fn connect(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(tls) = &config.tls {
        if let Err(e) = crate::tls::server_config(&tls.cert_file, &tls.key_file) {
            problems.push(format!("[tls]: {e}"));
        }
    }
    match crate::upstream::UpstreamTarget::from_config(&config.upstream) {
        Ok(target) => problems.extend(database(config, &target).await),
        Err(e) => problems.push(format!("[upstream]: {e:#}")),
    }
    if let Some(cluster) = &config.cluster {
        if let Err(e) = crate::control::probe(cluster).await {
            problems.push(format!("[cluster]: {e:#}"));
        }
    }
    for o in &config.auth.oidc {
        if let Err(e) = issuer(o).await {
            problems.push(format!("auth.oidc {}: {e:#}", o.name));
        }
    }
    for s in config
        .auth
        .saml
        .iter()
        .filter(|s| s.idp_metadata_url.is_some())
    {
        let fetched = match crate::auth::saml::SamlIssuer::new(s) {
            Ok(i) => i.fetch().await,
            Err(e) => Err(e),
        };
        if let Err(e) = fetched {
            problems.push(format!("auth.saml {}: idp_metadata_url: {e:#}", s.name));
        }
    }
    problems
}

/// Separates the parts of a catalog row (a name may hold dots, never this).
const SEP: char = '\u{1f}';

async fn database(config: &Config, target: &crate::upstream::UpstreamTarget) -> Vec<String> {
    let mut problems = Vec::new();
    let catalog = async {
        let schemas = target
            .query_column("SELECT nspname FROM pg_namespace")
            .await?;
        let columns = target
            .query_column(
                "SELECT n.nspname || chr(31) || c.relname || chr(31) || coalesce(a.attname, '') \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 \
                 AND NOT a.attisdropped WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')",
            )
            .await?;
        Ok::<_, crate::upstream::UpstreamError>((schemas, columns))
    };
    let (schemas, rows) = match catalog.await {
        Ok(c) => c,
        Err(e) => {
            return vec![format!(
                "[upstream]: cannot read the database's catalog: {e}"
            )]
        }
    };
    let schemas: HashSet<String> = schemas.into_iter().collect();
    let mut relations = HashSet::new();
    let mut columns = HashSet::new();
    for row in &rows {
        let mut parts = row.split(SEP);
        if let (Some(s), Some(t), Some(c)) = (parts.next(), parts.next(), parts.next()) {
            relations.insert((s.to_owned(), t.to_owned()));
            columns.insert((s.to_owned(), t.to_owned(), c.to_owned()));
        }
    }
    for role in &config.roles {
        for g in &role.grants {
            if g.schema != "*" && !schemas.contains(&g.schema) {
                problems.push(format!(
                    "role {}: grant on schema {}: no such schema",
                    role.name, g.schema
                ));
                continue;
            }
            for t in g.tables.iter().filter(|t| !t.contains('*')) {
                let found = relations
                    .iter()
                    .any(|(s, r)| r == t && (g.schema == "*" || *s == g.schema));
                if !found {
                    problems.push(format!(
                        "role {}: grant on {}.{t}: no such table or view",
                        role.name, g.schema
                    ));
                }
            }
        }
    }
    for phi in &config.phi {
        let (schema, table) = phi.qualified();
        if !relations.contains(&(schema.clone(), table.clone())) {
            problems.push(format!("[[phi]] {schema}.{table}: no such table"));
            continue;
        }
        for c in phi.columns.keys() {
            if !columns.contains(&(schema.clone(), table.clone(), c.clone())) {
                problems.push(format!("[[phi]] {schema}.{table}: no column {c}"));
            }
        }
    }
    problems
}

/// The issuer answers: its discovery document names it (or its jwks_uri serves keys).
async fn issuer(o: &crate::config::OidcConfig) -> anyhow::Result<()> {
    let client = crate::auth::jwks::client(o.ca_file.as_deref())?;
    if let Some(uri) = &o.jwks_uri {
        let keys = crate::auth::jwks::get_json(&client, uri).await?;
        if !keys["keys"].is_array() {
            anyhow::bail!("{uri}: not a JWKS (no \"keys\")");
        }
        return Ok(());
    }
    let url = format!(
        "{}/.well-known/openid-configuration",
        o.issuer.trim_end_matches('/')
    );
    let doc = crate::auth::jwks::get_json(&client, &url).await?;
    if doc["issuer"].as_str() != Some(o.issuer.as_str()) {
        anyhow::bail!("{url}: the document names another issuer");
    }
    if !doc["jwks_uri"].is_string() {
        anyhow::bail!("{url}: no jwks_uri");
    }
    Ok(())
}
