//! What the masking floor provisions in the database, checked from the database and through
//! real clients: approved inserts draw from sequences, every privilege the policy implies is
//! verified (or the start is refused, naming what is missing), logins of removed roles go,
//! writes no approval can make run are refused at once, `psql`'s catalog commands show the
//! agent its tables and none of the gateway's internals, and `phigate discover` does not tag
//! keys or digit codes on one weak signal.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use phigate_testkit::raw::{query, Msg, Raw};
use phigate_testkit::{Cluster, Gateway, GatewayOptions};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_phigate"))
}

/// Members (PHI, tagged) with a serial key; claims (no PHI) with a serial key, an integer
/// foreign key named like a member id and five-digit CPT codes; visits with an identity key.
fn cluster() -> &'static Cluster {
    phigate_testkit::clinic(
        "CREATE TABLE members (id serial PRIMARY KEY, name text, email text, zip text, plan text);\n\
         INSERT INTO members (name, email, zip, plan) \
           SELECT 'Member ' || g, 'member' || g || '@example.org', lpad((2100 + g)::text, 5, '0'), 'gold' \
           FROM generate_series(1, 40) g;\n\
         CREATE TABLE claims (id serial PRIMARY KEY, member_id int REFERENCES members (id), \
           cpt_code text, amount numeric);\n\
         INSERT INTO claims (member_id, cpt_code, amount) \
           SELECT 1 + g % 40, (99201 + g % 15)::text, g FROM generate_series(1, 60) g;\n\
         CREATE TABLE visits (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, member_id int, reason text);\n",
    )
}

fn db(sql: &str) -> String {
    cluster()
        .psql("clinic", sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .trim()
        .to_owned()
}

const PHI: &str = r#"
[[phi]]
table = "public.members"
columns = { name = "name", email = "email", zip = "zip" }
"#;

/// The agent is masked, reads `schema`, and every write it tries waits for a reviewer.
fn policy(schema: &str, clinician_masked: bool) -> String {
    format!(
        r#"
[[role]]
name = "ai-agent"
masked = true
[[role.grant]]
schema = "{schema}"
actions = ["select"]

[[role]]
name = "clinician"
masked = {clinician_masked}
[[role.grant]]
schema = "public"
actions = ["select"]

[[role]]
name = "reviewer"

[[rule]]
name = "agent-writes-need-approval"
roles = ["ai-agent"]
kinds = ["write"]
action = "require_approval"
{PHI}"#
    )
}

fn options(policy: String, top: &str) -> GatewayOptions {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.policy = policy;
    opts.top = top.to_owned();
    opts.extra = "[approvals]\ntimeout_secs = 20\n".into();
    opts
}

fn gateway() -> Gateway {
    Gateway::start_with_identities(
        bin(),
        options(policy("public", false), ""),
        &["agent", "clinician", "reviewer"],
    )
    .unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}

fn error_of(msgs: &[Msg]) -> Option<&Msg> {
    msgs.iter().find(|m| m.tag == b'E')
}

/// Sends `sql` as the agent, approves the review it opens, and returns what came back.
fn approved(gw: &Gateway, agent: &mut Raw, sql: &str) -> Vec<Msg> {
    agent.send(&query(sql));
    gw.approve_next(gw.token("reviewer"), "checked")
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    agent.until_ready()
}

/// Issue 16 item 1: an approved INSERT of the masked agent runs on tables whose keys come from
/// sequences (serial, identity), through a masking view and directly, and returns the new id.
#[test]
fn approved_inserts_draw_from_the_tables_sequences() {
    let gw = gateway();
    let mut agent = Raw::login(&gw, "agent");
    for (sql, table) in [
        (
            "INSERT INTO claims (member_id, cpt_code, amount) VALUES (1, '99213', 5) RETURNING id",
            "claims",
        ),
        (
            "INSERT INTO members (plan) VALUES ('silver') RETURNING id",
            "members",
        ),
        (
            "INSERT INTO visits (member_id, reason) VALUES (1, 'checkup') RETURNING id",
            "visits",
        ),
    ] {
        let msgs = approved(&gw, &mut agent, sql);
        assert!(error_of(&msgs).is_none(), "{sql}: {msgs:?}");
        let id = msgs
            .iter()
            .find_map(Msg::first_column)
            .unwrap_or_else(|| panic!("{sql}: no id in {msgs:?}"));
        let stored = db(&format!("SELECT count(*) FROM {table} WHERE id = {id}"));
        assert_eq!(stored, "1", "{sql}: row {id} is in {table}");
    }
}

/// Issue 16 item 4: a write that assigns a masked column can never run through the masking
/// view, so it is refused at once (no review is opened); a write to the same table's unmasked
/// column is still held and, approved, runs.
#[test]
fn writes_to_masked_columns_are_refused_without_a_review() {
    let gw = gateway();
    let mut agent = Raw::login(&gw, "agent");
    for sql in [
        "UPDATE members SET email = 'someone@example.org' WHERE id = 2",
        "INSERT INTO members (name, plan) VALUES ('New Member', 'gold')",
        "WITH x AS (UPDATE public.members SET zip = '00000' WHERE id = 2 RETURNING id) SELECT * FROM x",
    ] {
        let msgs = agent.query(sql);
        let e = error_of(&msgs).unwrap_or_else(|| panic!("{sql}: refused: {msgs:?}"));
        assert_eq!(e.code(), "42501", "{sql}");
        assert!(
            e.message().contains("is masked for role ai-agent and cannot be written")
                && e.message().contains("of public.members"),
            "{sql}: {}",
            e.message()
        );
    }
    let (_, body) = gw
        .http_as("GET", "/v1/reviews", gw.token("reviewer"), None)
        .expect("reviews");
    let reviews: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        reviews["reviews"].as_array().map(Vec::len),
        Some(0),
        "{body}"
    );
    let msgs = approved(
        &gw,
        &mut agent,
        "UPDATE members SET plan = 'bronze' WHERE id = 3",
    );
    assert!(error_of(&msgs).is_none(), "{msgs:?}");
    assert_eq!(db("SELECT plan FROM members WHERE id = 3"), "bronze");
}

/// Issue 16 item 3: a table the policy lets the masked agent read, which the gateway's login can
/// read but not grant (no grant option): the start is refused, naming the table, the privilege
/// and what the gateway's login needs. (Before, provisioning succeeded and the agent got
/// "permission denied" later.)
#[test]
fn a_gateway_login_that_cannot_grant_is_refused_at_start() {
    db("CREATE SCHEMA ext; CREATE TABLE ext.codes (code text); \
        GRANT USAGE ON SCHEMA ext TO phigate_app; GRANT SELECT ON ext.codes TO phigate_app;");
    // The listener is bound before provisioning: the process may still be running.
    let log = match Gateway::start_with_identities(
        bin(),
        options(policy("ext", false), ""),
        &["agent", "reviewer"],
    ) {
        Ok(mut gw) => {
            let status = gw
                .wait_exit(Duration::from_secs(30))
                .expect("the gateway exits");
            assert!(!status.success(), "{}", gw.log());
            gw.log()
        }
        Err(e) => e.to_string(),
    };
    assert!(
        log.contains("cannot give the masked login")
            && log.contains(
                "SELECT on ext.codes (the gateway's login must own it or hold SELECT WITH GRANT OPTION on it)"
            ),
        "{log}"
    );
    // With the grant option, the same policy starts and the agent reads the table.
    db("GRANT SELECT ON ext.codes TO phigate_app WITH GRANT OPTION; \
        GRANT USAGE ON SCHEMA ext TO phigate_app WITH GRANT OPTION; INSERT INTO ext.codes VALUES ('A1');");
    let gw = Gateway::start_with_identities(
        bin(),
        options(policy("ext", false), ""),
        &["agent", "reviewer"],
    )
    .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    let mut agent = Raw::login(&gw, "agent");
    let msgs = agent.query("SELECT code FROM ext.codes");
    assert!(error_of(&msgs).is_none(), "{msgs:?}");
    assert_eq!(
        msgs.iter().find_map(Msg::first_column).as_deref(),
        Some("A1")
    );
}

/// Waits until the gateway has provisioned (it binds its listener first): a session of the
/// masked agent starts only after.
fn provisioned(gw: &Gateway) {
    let mut agent = Raw::login(gw, "agent");
    assert!(error_of(&agent.query("SELECT 1")).is_none());
}

fn masked_logins(role: &str) -> Vec<String> {
    let out = db(&format!(
        "SELECT rolname FROM pg_roles WHERE rolname LIKE 'phigate\\_m\\_{role}\\_%' ORDER BY 1"
    ));
    out.lines().map(str::to_owned).collect()
}

fn schemas_like(prefix: &str) -> String {
    db(&format!(
        "SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname LIKE '{prefix}%'"
    ))
}

/// A gateway whose clinician is masked too, under a token key of its own in `dir`, once it has
/// provisioned; with the one clinician login it added and the config's top lines.
fn masked_clinician_gateway(dir: &Path) -> (Gateway, String, String) {
    let top = format!("masking_key_file = \"{}\"", dir.join("token.key").display());
    let before = masked_logins("clinician");
    let gw = Gateway::start_with_identities(
        bin(),
        options(policy("public", true), &top),
        &["agent", "clinician", "reviewer"],
    )
    .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    provisioned(&gw);
    let added: Vec<String> = masked_logins("clinician")
        .into_iter()
        .filter(|l| !before.contains(l))
        .collect();
    let [login] = added.as_slice() else {
        panic!("one clinician login provisioned: {added:?}");
    };
    let login = login.clone();
    (gw, login, top)
}

/// Issue 16 item 3: a role no longer configured as masked loses its login and schemas at the
/// next start (the same token key); the configured ones stay.
#[test]
fn logins_of_roles_no_longer_masked_are_removed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (gw, login, top) = masked_clinician_gateway(dir.path());
    let login = &login;
    assert_eq!(schemas_like(login), format!("{login},{login}_k"));
    let agent_logins = masked_logins("ai\\_agent");
    drop(gw);
    let gw = Gateway::start_with_identities(
        bin(),
        options(policy("public", false), &top),
        &["agent", "clinician", "reviewer"],
    )
    .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    provisioned(&gw);
    assert!(
        !masked_logins("clinician").contains(login),
        "{login} removed"
    );
    assert_eq!(schemas_like(login), "", "its schemas removed");
    for l in agent_logins {
        assert!(masked_logins("ai\\_agent").contains(&l), "{l} kept");
    }
}

fn psql(gw: &Gateway, command: &str) -> (String, String) {
    let out = Command::new("/usr/bin/psql")
        .env("PGPASSWORD", gw.token("agent"))
        .arg(format!(
            "host=127.0.0.1 port={} dbname=clinic user=ai-agent sslmode=disable",
            gw.pg_port
        ))
        .args(["-X", "-c", command])
        .output()
        .expect("psql");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 16 item 14: the agent's catalog as psql shows it. `\dt` lists the tables it reads and
/// none of the gateway's internals (the token key table lived in the masked schema before);
/// `\d` lists the masked tables under the names the agent uses; the internals' schema is out
/// of reach.
#[test]
fn psql_shows_the_agent_its_tables_and_no_internals() {
    let gw = gateway();
    let (dt, err) = psql(&gw, "\\dt");
    assert!(err.is_empty(), "{err}");
    assert!(dt.contains("claims"), "{dt}");
    assert!(!dt.contains("token_key"), "{dt}");
    let (d, err) = psql(&gw, "\\d");
    assert!(err.is_empty(), "{err}");
    assert!(!d.contains("token_key"), "{d}");
    let members = d
        .lines()
        .find(|l| l.contains("| members "))
        .unwrap_or_else(|| panic!("members listed: {d}"));
    assert!(members.contains("phigate_m_ai_agent_"), "{members}");
    let (desc, err) = psql(&gw, "\\d members");
    assert!(err.is_empty(), "{err}");
    for col in ["id", "name", "email", "zip", "plan"] {
        assert!(
            desc.lines()
                .any(|l| l.trim_start().starts_with(&format!("{col} "))),
            "{col}: {desc}"
        );
    }
    let login = masked_logins("ai\\_agent")
        .into_iter()
        .find(|l| desc.contains(l.as_str()))
        .unwrap_or_else(|| panic!("the agent's schema in {desc}"));
    let direct = db(&format!(
        "SELECT has_schema_privilege('{login}', '{login}_k', 'USAGE'), \
         has_table_privilege('{login}', '{login}_k.token_key', 'SELECT')"
    ));
    assert_eq!(direct, "f|f");
}

/// Issue 16 item 5: `phigate discover` prints a confidence per line, tags the ZIP column (name
/// and values agree), and tags neither the integer foreign key named like a member id nor the
/// five-digit CPT codes (it prints them commented out, with the reason).
#[test]
fn discover_does_not_tag_keys_or_digit_codes_on_one_signal() {
    let gw = gateway();
    let out = Command::new(bin())
        .args(["discover", "--config"])
        .arg(gw.config_path())
        .output()
        .expect("discover");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("\nzip = \"zip\"   # confidence: high;"),
        "{text}"
    );
    assert!(
        text.contains("\nemail = \"email\"   # confidence: high;"),
        "{text}"
    );
    assert!(
        text.contains("\n# member_id = \"member_id\"   # confidence: low;"),
        "{text}"
    );
    assert!(
        text.contains("\n# cpt_code = \"zip\"   # confidence: low;"),
        "{text}"
    );
    for line in text
        .lines()
        .filter(|l| l.contains(" = \"") && !l.starts_with("table"))
    {
        assert!(line.contains("# confidence: "), "{line}");
    }
    let parsed: toml::Value = toml::from_str(&text).expect("a TOML snippet");
    let claims = parsed["phi"].as_array().and_then(|t| {
        t.iter()
            .find(|t| t["table"].as_str() == Some("public.claims"))
    });
    if let Some(claims) = claims {
        assert!(claims["columns"].get("member_id").is_none(), "{text}");
        assert!(claims["columns"].get("cpt_code").is_none(), "{text}");
    }
}

/// The `config_reload` audit records, as `phigate audit search` gives them.
fn reloads(gw: &Gateway) -> Vec<serde_json::Value> {
    let out = Command::new(bin())
        .args(["audit", "search", "--data-dir"])
        .arg(gw.data_dir())
        .args(["--type", "config_reload"])
        .output()
        .expect("audit search");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Issue 16 item 3, on reload: a new policy whose grants the gateway's login cannot pass on is
/// refused, naming what is missing, and nothing of it is provisioned: the masked agent goes on
/// reading what the previous policy gave it (the check runs inside the provisioning
/// transaction, which rolls back).
#[test]
fn a_reload_the_gateway_login_cannot_grant_keeps_the_previous_provisioning() {
    db("CREATE SCHEMA ext2; CREATE TABLE ext2.codes (code text); \
        GRANT USAGE ON SCHEMA ext2 TO phigate_app; GRANT SELECT ON ext2.codes TO phigate_app;");
    let gw = gateway();
    provisioned(&gw);
    let text = std::fs::read_to_string(gw.config_path()).expect("config");
    let changed = text.replacen("schema = \"public\"", "schema = \"ext2\"", 1);
    assert_ne!(text, changed);
    std::fs::write(gw.config_path(), changed).expect("rewrite");
    gw.reload().expect("SIGHUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let record = loop {
        if let Some(r) = reloads(&gw).pop() {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no config_reload record"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(record["ok"], false, "{record}");
    let error = record["error"].as_str().unwrap_or_default();
    assert!(error.contains("SELECT on ext2.codes"), "{record}");
    let mut agent = Raw::login(&gw, "agent");
    for sql in [
        "SELECT count(*) FROM members",
        "SELECT count(*) FROM claims",
    ] {
        let msgs = agent.query(sql);
        assert!(error_of(&msgs).is_none(), "{sql}: {msgs:?}");
    }
}

/// An unchanged masking plan is not run again at a reload — unless its logins or schemas are
/// gone (dropped by hand, or by another gateway with another configuration): then the reload
/// provisions them again and the masked agent works without a restart.
#[test]
fn a_reload_provisions_again_a_masked_login_dropped_behind_the_gateways_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (gw, login, _) = masked_clinician_gateway(dir.path());
    let login = &login;
    db(&format!(
        "DROP SCHEMA \"{login}\" CASCADE; DROP SCHEMA \"{login}_k\" CASCADE; \
         DROP OWNED BY \"{login}\"; DROP ROLE \"{login}\";"
    ));
    gw.reload().expect("SIGHUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while reloads(&gw).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no config_reload record"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let record = reloads(&gw).pop().expect("a reload record");
    assert_eq!(record["ok"], true, "{record}");
    assert!(
        masked_logins("clinician").contains(login),
        "{login} is back"
    );
    let mut clinician = Raw::login(&gw, "clinician");
    let msgs = clinician.query("SELECT count(*) FROM members");
    assert!(error_of(&msgs).is_none(), "{msgs:?}");
}
