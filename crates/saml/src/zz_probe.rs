// TEMPORARY security probe; delete.
use crate::*;
use std::time::{Duration, SystemTime};

#[test]
fn probe_responses() {
    let dir = std::env::var("PROBE_DIR").unwrap_or("/tmp/saml/cases".into());
    let md = std::fs::read_to_string("/tmp/saml/metadata.xml").unwrap();
    let idp = IdentityProvider::from_metadata(&md).unwrap();
    let sp = ServiceProvider {
        entity_id: "https://sp.test/sp".into(),
        acs_url: "https://sp.test/acs".into(),
    };
    let irt = std::env::var("PROBE_IRT").ok();
    let subj = std::env::var("PROBE_SUBJECT_ATTR").ok();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    names.sort();
    for p in names {
        let xml = std::fs::read(&p).unwrap();
        let b = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &xml);
        let expect = Expect {
            idp: &idp,
            sp: &sp,
            in_response_to: irt.as_deref(),
            now: SystemTime::now(),
            skew: Duration::from_secs(60),
            algorithms: &SignatureAlgorithm::ALL,
            subject_attribute: subj.as_deref(),
            groups_attribute: Some("groups"),
        };
        let t = std::time::Instant::now();
        let r = read_response(&b, &expect);
        println!(
            "PROBE {} => {:?} ({:?})",
            p.file_name().unwrap().to_string_lossy(),
            r.map(|a| (a.id, a.subject, a.groups)),
            t.elapsed()
        );
    }
}

#[test]
fn probe_c14n() {
    let dir = "/tmp/saml/c14n";
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    names.sort();
    for p in names {
        let xml = std::fs::read_to_string(&p).unwrap();
        let incl: Vec<String> = std::fs::read_to_string(p.with_extension("incl"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let out = match crate::xml::parse(&xml) {
            Ok(doc) => {
                // apex: first element with attribute apex="1", else root
                let apex = doc
                    .descendants()
                    .find(|n| n.attribute("apex").is_some())
                    .unwrap_or(doc.root_element());
                crate::c14n::canonicalize(apex, None, &incl)
            }
            Err(e) => format!("PARSE-ERROR {e}").into_bytes(),
        };
        std::fs::write(p.with_extension("ours"), out).unwrap();
    }
}

#[test]
fn probe_dsig() {
    let md = std::fs::read_to_string("/tmp/saml/metadata.xml").unwrap();
    let idp = IdentityProvider::from_metadata(&md).unwrap();
    let mut names: Vec<_> = std::fs::read_dir("/tmp/saml/dsig")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    names.sort();
    for p in names {
        let xml = std::fs::read_to_string(&p).unwrap();
        let r = crate::xml::parse(&xml).and_then(|doc| {
            let sig = doc
                .descendants()
                .find(|n| crate::xml::is(*n, crate::xml::DSIG, "Signature"))
                .unwrap();
            crate::dsig::verify(
                sig.parent().unwrap(),
                sig,
                &idp.signing_certs,
                &SignatureAlgorithm::ALL,
            )
        });
        println!(
            "DSIG {} => {:?}",
            p.file_name().unwrap().to_string_lossy(),
            r
        );
    }
}
