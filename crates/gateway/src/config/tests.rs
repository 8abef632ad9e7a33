//! Loading and validating config files: defaults, refusals, and their messages.

use super::*;

const MINIMAL: &str = r#"
data_dir = "/var/lib/phigate"

[listen]
address = "127.0.0.1:6432"

[upstream]
host = "127.0.0.1"
user = "phigate"
password = "x"
"#;

#[test]
fn minimal_config_loads_with_defaults() {
    let c = Config::parse(MINIMAL, Path::new("t.toml")).expect("valid");
    assert_eq!(c.upstream.port, 5432);
    assert_eq!(c.listen.max_message_bytes, 64 * 1024 * 1024);
    assert_eq!(c.upstream.tls, UpstreamTlsMode::Disable);
}

#[test]
fn unknown_field_is_reported_with_its_line() {
    let text = MINIMAL.replace(
        "user = \"phigate\"",
        "user = \"phigate\"\npasword = \"typo\"",
    );
    let err = Config::parse(&text, Path::new("t.toml"))
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("line 10"), "{err}");
    assert!(err.contains("pasword"), "{err}");
}

#[test]
fn published_schema_is_current() {
    let published = include_str!("../../../../docs/config.schema.json");
    assert_eq!(
        published.trim(),
        Config::json_schema().trim(),
        "docs/config.schema.json is stale: run `phigate schema > docs/config.schema.json`"
    );
}

#[test]
fn identity_with_an_undefined_role_is_rejected() {
    let text = format!(
        "{MINIMAL}\n[[identity]]\nsubject = \"a@b\"\ntoken_sha256 = \"{}\"\nroles = [\"ghost\"]\n",
        "0".repeat(64)
    );
    let err = Config::parse(&text, Path::new("t.toml"))
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("role ghost is not defined"), "{err}");
}

#[test]
fn restricted_roles_need_a_fixed_database() {
    let text = format!("{MINIMAL}\n[[role]]\nname = \"agent\"\n");
    let err = Config::parse(&text, Path::new("t.toml"))
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("upstream.database"), "{err}");
    let text = text.replace(
        "password = \"x\"",
        "password = \"x\"\ndatabase = \"clinic\"",
    );
    Config::parse(&text, Path::new("t.toml")).expect("valid with a database");
}

#[test]
fn two_password_sources_are_rejected() {
    let text = MINIMAL.replace(
        "password = \"x\"",
        "password = \"x\"\npassword_env = \"PW\"",
    );
    assert!(Config::parse(&text, Path::new("t.toml")).is_err());
}

/// Issue 23 item 6: with several issuers, a binding by subject names its issuer.
#[test]
fn item6_subject_bindings_name_their_issuer_when_several_issuers_exist() {
    let oidc = |name: &str, n: u8| {
        format!(
            "\n[[auth.oidc]]\nname = \"{name}\"\nissuer = \"https://idp{n}.example.org\"\naudience = [\"phigate\"]\n"
        )
    };
    let base = MINIMAL.replace(
        "password = \"x\"",
        "password = \"x\"\ndatabase = \"clinic\"",
    );
    let role = "\n[[role]]\nname = \"agent\"\n";
    let binding = |issuer: &str| {
        format!("\n[[binding]]\nsubjects = [\"alice\"]\nroles = [\"agent\"]\n{issuer}\n")
    };
    let parse = |text: String| Config::parse(&text, Path::new("t.toml")).map(|_| ());
    // One issuer: unambiguous.
    parse(format!("{base}{}{role}{}", oidc("corp", 1), binding(""))).expect("one issuer");
    // Two issuers: the binding must say which.
    let two = format!("{base}{}{}{role}", oidc("corp", 1), oidc("partner", 2));
    let err = parse(format!("{two}{}", binding("")))
        .expect_err("must fail")
        .to_string();
    assert!(
        err.contains("binding #1") && err.contains("issuer"),
        "{err}"
    );
    parse(format!("{two}{}", binding("issuer = \"corp\""))).expect("named issuer");
    // Groups alone stay as they were.
    parse(format!(
        "{two}\n[[binding]]\ngroups = [\"g\"]\nroles = [\"agent\"]\n"
    ))
    .expect("group binding");
}

/// Issue 23 item 11: `HTTP://` is plain http, whatever its case.
#[test]
fn item11_upper_case_http_issuers_and_jwks_are_refused() {
    let oidc = |issuer: &str, jwks: &str| {
        format!(
            "{MINIMAL}\n[[auth.oidc]]\nname = \"corp\"\nissuer = \"{issuer}\"\naudience = [\"phigate\"]\n{jwks}\n"
        )
    };
    let parse = |text: String| Config::parse(&text, Path::new("t.toml")).map(|_| ());
    for (issuer, jwks) in [
        ("HTTP://idp.example.org", ""),
        ("Http://idp.example.org", ""),
        (
            "https://idp.example.org",
            "jwks_uri = \"HTTP://idp.example.org/jwks\"",
        ),
        ("ftp://idp.example.org", ""),
    ] {
        let err = parse(oidc(issuer, jwks)).expect_err(issuer).to_string();
        assert!(err.contains("must be https"), "{issuer} {jwks}: {err}");
    }
    parse(oidc("HTTPS://idp.example.org", "")).expect("https in capitals is https");
    parse(oidc("HTTP://127.0.0.1:9000", "")).expect("loopback");
}

/// Every setting the schema knows, as its dotted TOML path (`listen.address`, `role.grant.tables`);
/// maps whose keys the user chooses (`[[phi]] columns`, a role's `masking`) end in `*`.
fn schema_paths(node: &serde_json::Value, defs: &serde_json::Value, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(name) = node["$ref"].as_str().and_then(|r| r.rsplit('/').next()) {
        return schema_paths(&defs[name], defs, prefix);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for branch in node[key].as_array().into_iter().flatten() {
            out.extend(schema_paths(branch, defs, prefix));
        }
    }
    if node["items"].is_object() {
        out.extend(schema_paths(&node["items"], defs, prefix));
    }
    if node["additionalProperties"].is_object() {
        out.push(format!("{prefix}*"));
    }
    for (key, child) in node["properties"].as_object().into_iter().flatten() {
        out.push(format!("{prefix}{key}"));
        out.extend(schema_paths(child, defs, &format!("{prefix}{key}.")));
    }
    out
}

/// Every key the reference's TOML examples set, as dotted paths (array elements merged).
fn example_paths(value: &toml::Value, prefix: &str, open: &[String], out: &mut Vec<String>) {
    match value {
        toml::Value::Table(table) => {
            if open.iter().any(|p| p.strip_suffix('*') == Some(prefix)) {
                return;
            }
            for (key, child) in table {
                out.push(format!("{prefix}{key}"));
                example_paths(child, &format!("{prefix}{key}."), open, out);
            }
        }
        toml::Value::Array(items) => {
            for item in items {
                example_paths(item, prefix, open, out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_configuration_reference_documents_every_setting_and_only_those() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../../../docs/config.schema.json")).expect("schema");
    let known = schema_paths(&schema, &schema["definitions"], "");
    let open: Vec<String> = known.iter().filter(|p| p.ends_with('*')).cloned().collect();
    let reference = include_str!("../../../../docs/configuration.md");
    let mut documented = Vec::new();
    for block in reference.split("```toml\n").skip(1) {
        let text = block.split("```").next().unwrap_or_default();
        let value: toml::Value = toml::from_str(text)
            .unwrap_or_else(|e| panic!("a TOML example in docs/configuration.md: {e}"));
        example_paths(&value, "", &open, &mut documented);
    }
    let missing: Vec<&String> = known
        .iter()
        .filter(|p| !p.ends_with('*') && !documented.contains(p))
        .collect();
    let unknown: Vec<&String> = documented.iter().filter(|p| !known.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "settings missing from docs/configuration.md: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "docs/configuration.md names settings that do not exist: {unknown:?}"
    );
}

#[test]
fn results_reads_in_the_process_tier_are_warned_about() {
    let text =
        format!("{MINIMAL}\n[audit]\ndurability = \"process\"\nread_durability = \"results\"\n");
    let c = Config::parse(&text, Path::new("t.toml")).expect("valid");
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.message.contains("has no effect")),
        "no warning"
    );
    let strict = text.replace("durability = \"process\"\n", "");
    let c = Config::parse(&strict, Path::new("t.toml")).expect("valid");
    assert!(c.warnings().is_empty());
}
