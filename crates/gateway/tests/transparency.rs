//! What a driver sees of its session through the gateway, compared with PostgreSQL direct:
//! client encodings other than UTF8 (statement text decoded for analysis, the gateway's own
//! messages encoded for the client), the pid notifications carry, and application_name.

use std::path::{Path, PathBuf};
use std::process::Command;

use phigate_testkit::raw::{show, Msg, Raw};
use phigate_testkit::{run, Cluster, Gateway, GatewayOptions, APP_PASSWORD, APP_USER, DATABASE};

fn cluster() -> &'static Cluster {
    phigate_testkit::clinic(phigate::demo::SEED_SQL)
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_phigate"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> String {
    std::env::var("PHIGATE_PYTHON").unwrap_or_else(|_| {
        let venv = repo_root().join("target/clients-venv/bin/python");
        if venv.exists() {
            venv.display().to_string()
        } else {
            "python3".into()
        }
    })
}

fn direct_url() -> String {
    format!(
        "postgresql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/{DATABASE}?sslmode=disable",
        cluster().port()
    )
}

/// Runs the psycopg check; its one line of JSON.
fn check(args: &[&str]) -> serde_json::Value {
    let script = repo_root().join("tests/clients/python/check_transparency.py");
    let (ok, out, err) = run(Command::new(python()).arg(script).args(args)).expect("python runs");
    assert!(ok, "check_transparency.py {args:?} failed:\n{out}\n{err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A restricted role that may read the demo's tables.
const RESTRICTED: &str = r#"
[[role]]
name = "ai-agent"
[[role.grant]]
schema = "public"
actions = ["select"]
"#;

/// A pass-through role (`restricted = false`) in LATIN1, WIN1252, LATIN5, KOI8R, EUC_JP and
/// EUC_KR, chosen at connect time and with SET / SET NAMES / RESET, gets what it gets direct:
/// the same encoding reported, the same text back in literals, parameters, column names and
/// the database's own errors; its own notifications and another session's carry the pids the
/// driver was given; application_name reads back as the driver set it.
#[test]
fn a_pass_through_role_sees_its_session_as_direct() {
    let gw = Gateway::start(bin(), GatewayOptions::for_cluster(cluster())).expect("gateway");
    let direct = check(&[&direct_url(), &direct_url()]);
    let through = check(&[&gw.url("agent"), &gw.url("clinician")]);
    assert_eq!(direct["encodings"]["EUC_JP"]["client_encoding"], "EUC_JP");
    assert_eq!(
        direct["notifications"],
        serde_json::json!([["other", "other's pid"], ["own", "own pid"]])
    );
    for part in ["encodings", "switch", "application_name", "notifications"] {
        assert_eq!(direct[part], through[part], "{part}");
    }
}

/// A restricted role may choose its encoding when it connects (not change it later): the
/// same text comes back as direct, and the gateway's own refusals reach the driver in the
/// driver's encoding (a LATIN1 driver reads `é` in a refusal, not `Ã©`).
#[test]
fn a_restricted_role_reads_and_is_refused_in_its_own_encoding() {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.policy = RESTRICTED.into();
    let gw = Gateway::start_with_identities(bin(), opts, &["agent"]).expect("gateway");
    let direct = check(&[&direct_url()]);
    let through = check(&[&gw.url("agent"), "--restricted"]);
    for (enc, text) in [
        ("LATIN1", "café ñ ü"),
        ("WIN1252", "café € œ"),
        ("LATIN5", "İstanbul ğ ş"),
        ("KOI8R", "привет"),
        ("EUC_JP", "日本語 テキスト"),
        ("EUC_KR", "한국어"),
    ] {
        let (d, t) = (&direct["encodings"][enc], &through["encodings"][enc]);
        for part in [
            "client_encoding",
            "literal",
            "param",
            "column_name",
            "escape",
            "unknown_relation",
        ] {
            assert_eq!(d[part], t[part], "{enc} {part}");
        }
        // The function does not exist direct; through the gateway the refusal names it, in
        // the driver's encoding.
        let refusal = t["unknown_function"]["error"][1]
            .as_str()
            .unwrap_or_else(|| panic!("{enc}: {t}"));
        assert!(refusal.starts_with("phigate:"), "{enc}: {refusal}");
        assert!(refusal.contains(&format!("no {text}")), "{enc}: {refusal}");
    }
    assert_eq!(direct["application_name"], through["application_name"]);
    assert_eq!(through["set_encoding"]["error"][0], "42501", "{through}");
    assert_eq!(
        through["still"],
        serde_json::json!(["iso8859-1", {"rows": [["café"]]}])
    );
}

/// The values of a result's rows, as bytes.
fn values(msgs: &[Msg]) -> Vec<Vec<u8>> {
    msgs.iter()
        .filter(|m| m.tag == b'D')
        .flat_map(|m| {
            let mut out = Vec::new();
            let mut at = 2;
            while let Some(len) = m.body.get(at..at + 4) {
                let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                at += 4;
                let Ok(len) = usize::try_from(len) else {
                    continue;
                };
                out.push(m.body[at..at + len].to_vec());
                at += len;
            }
            out
        })
        .collect()
}

/// A masked role in LATIN1: the masked values it reads are what a UTF8 session reads, in
/// LATIN1; the content detectors still mask an identifier in LATIN1 text and leave the rest of
/// the text as the client encoded it; a refusal naming a non-ASCII name reaches it in LATIN1.
#[test]
fn a_masked_role_reads_masked_values_in_its_own_encoding() {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.policy = phigate::demo::policy_toml().expect("policy TOML");
    opts.extra = "[approvals]\nenabled = false\n".into();
    let gw = Gateway::start(bin(), opts).expect("gateway");
    let mut utf8 = Raw::try_login(&gw, "agent", &[]).unwrap_or_else(|m| panic!("{}", show(&m)));
    let mut latin1 = Raw::try_login(&gw, "agent", &[("client_encoding", "LATIN1")])
        .unwrap_or_else(|m| panic!("{}", show(&m)));
    let sql = "SELECT mrn, last_name, ssn, email FROM patients ORDER BY id LIMIT 20";
    let (a, b) = (values(&utf8.query(sql)), values(&latin1.query(sql)));
    assert_eq!(a.len(), 80, "{a:?}");
    let as_latin1: Vec<Vec<u8>> = a
        .iter()
        .map(|v| {
            String::from_utf8_lossy(v)
                .chars()
                .map(|c| u8::try_from(c).unwrap_or(b'?'))
                .collect()
        })
        .collect();
    assert_eq!(as_latin1, b);
    // "café" in LATIN1 around a phone number: the number is masked, é stays one LATIN1 byte.
    let msgs = latin1.query(b"SELECT 'caf\xe9: call 555-867-5309'::text");
    assert_eq!(
        values(&msgs),
        vec![b"caf\xe9: call ***-***-****".to_vec()],
        "{}",
        show(&msgs)
    );
    let msgs = latin1.query(b"SELECT \"caf\xe9\"()");
    let refusal = msgs.iter().find(|m| m.tag == b'E').expect("refused");
    let needle: &[u8] = b"caf\xe9";
    assert!(
        refusal.body.windows(needle.len()).any(|w| w == needle),
        "{}",
        show(&msgs)
    );
}
