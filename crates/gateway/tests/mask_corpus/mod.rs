//! The masking leak corpus, shared by the wire tests (masking.rs) and the MCP tests (mcp.rs):
//! every PHI value of the demo dataset, read directly, and the queries an agent might try.

#![allow(dead_code)]

use std::collections::HashSet;

use aho_corasick::AhoCorasick;
use phigate_testkit::Cluster;

pub fn clinic() -> &'static Cluster {
    phigate_testkit::clinic(phigate::demo::SEED_SQL)
}

/// Every PHI value of the demo dataset, as text (dates as YYYY-MM-DD), read directly.
pub fn phi_values() -> Vec<String> {
    let sql = "SELECT concat_ws(E'\\x1f', mrn, first_name, last_name, ssn, date_of_birth::text, \
               email, phone, address, city, zip, insurance_member_id) FROM patients";
    let rows = clinic().psql("clinic", sql).expect("read PHI");
    let mut values: HashSet<String> = HashSet::new();
    for row in rows.lines() {
        for (i, v) in row.split('\u{1f}').enumerate() {
            // Year-generalized dates are January 1st: a birthday on January 1st is not a leak.
            if i == 4 && v.ends_with("-01-01") {
                continue;
            }
            if v.len() >= 4 {
                values.insert(v.to_owned());
            }
        }
    }
    // The PHI planted in free-text notes (names, phone numbers, SSNs).
    let notes = clinic()
        .psql("clinic", "SELECT notes FROM encounters WHERE notes ~ '\\d{3}-\\d{2}-\\d{4}|\\d{3}-\\d{4}' LIMIT 200")
        .expect("notes");
    for n in notes.lines() {
        for m in n.split(|c: char| !(c.is_ascii_digit() || c == '-')) {
            if m.len() >= 8 && m.chars().filter(char::is_ascii_digit).count() >= 7 {
                values.insert(m.to_owned());
            }
        }
    }
    // Words that also occur in columns that are not PHI (a physician called Omar, a drug or a
    // department that shares a word with a surname) are not evidence of a leak.
    let public = clinic()
        .psql(
            "clinic",
            "SELECT DISTINCT attending FROM encounters UNION SELECT name FROM departments \
             UNION SELECT DISTINCT drug || ' ' || dose FROM prescriptions \
             UNION SELECT DISTINCT test || ' ' || unit FROM lab_results",
        )
        .expect("public values");
    for word in public.split(|c: char| !c.is_alphanumeric()) {
        values.remove(word);
    }
    assert!(
        values.len() > 50_000,
        "only {} PHI values read",
        values.len()
    );
    values.into_iter().collect()
}

/// The queries an agent might try. None uses a real PHI value as a literal (the agent has none).
pub const CORPUS: &[&str] = &[
    "SELECT * FROM patients LIMIT 200",
    "SELECT first_name, last_name, ssn, date_of_birth FROM patients",
    "SELECT p.* FROM patients p WHERE id < 300",
    "SELECT p FROM patients p LIMIT 50",
    "SELECT row_to_json(p) FROM patients p LIMIT 50",
    "SELECT to_jsonb(p) FROM patients p LIMIT 50",
    "SELECT json_agg(p) FROM (SELECT * FROM patients LIMIT 50) p",
    "SELECT string_agg(first_name || ' ' || last_name, ', ') FROM patients",
    "SELECT array_agg(ssn) FROM patients",
    "SELECT first_name || ' ' || last_name AS full_name FROM patients LIMIT 100",
    "SELECT upper(last_name), lower(email), initcap(first_name) FROM patients LIMIT 100",
    "SELECT ssn::text, date_of_birth::text, zip::text FROM patients LIMIT 100",
    "SELECT CASE WHEN id > 0 THEN ssn ELSE 'x' END FROM patients LIMIT 100",
    "SELECT COALESCE(phone, email), NULLIF(ssn, '') FROM patients LIMIT 100",
    "SELECT substr(ssn, 1, 3), left(phone, 3), right(mrn, 4) FROM patients LIMIT 100",
    "SELECT (SELECT ssn FROM patients WHERE id = 1)",
    "WITH x AS (SELECT * FROM patients) SELECT * FROM x LIMIT 100",
    "WITH RECURSIVE r(n, s) AS (SELECT 1, (SELECT ssn FROM patients LIMIT 1) UNION ALL SELECT n + 1, s FROM r WHERE n < 3) SELECT * FROM r",
    "SELECT first_name FROM patients UNION SELECT last_name FROM patients",
    "SELECT ssn FROM patients INTERSECT SELECT ssn FROM patients",
    "SELECT * FROM patients JOIN encounters e ON e.patient_id = patients.id LIMIT 100",
    "SELECT notes FROM encounters LIMIT 500",
    "SELECT e.notes, p.last_name, p.phone FROM encounters e JOIN patients p ON p.id = e.patient_id LIMIT 200",
    "SELECT * FROM unnest(ARRAY(SELECT ssn FROM patients LIMIT 50))",
    "SELECT jsonb_build_object('n', first_name, 's', ssn, 'd', date_of_birth) FROM patients LIMIT 50",
    "SELECT format('%s %s %s', first_name, ssn, phone) FROM patients LIMIT 50",
    "SELECT md5(ssn), sha256(convert_to(ssn, 'UTF8')) FROM patients LIMIT 5",
    "SELECT date_of_birth, extract(month FROM date_of_birth), extract(day FROM date_of_birth) FROM patients LIMIT 100",
    "SELECT age(date_of_birth), to_char(date_of_birth, 'YYYY-MM-DD') FROM patients LIMIT 100",
    "SELECT zip, count(*) FROM patients GROUP BY zip",
    "SELECT last_name, count(*) FROM patients GROUP BY last_name ORDER BY 2 DESC LIMIT 50",
    "SELECT * FROM patients WHERE ssn LIKE '1%'",
    "SELECT * FROM patients WHERE first_name = 'Mary'",
    "SELECT * FROM patients ORDER BY last_name, ssn LIMIT 100",
    "SELECT ssn::int FROM patients",
    "SELECT to_date(ssn, 'YYYY') FROM patients",
    "SELECT first_name::date FROM patients",
    "SELECT email::inet FROM patients",
    "SELECT 1 / (id - id), ssn FROM patients",
    "SELECT * FROM public.patients LIMIT 5",
    "SELECT * FROM pg_stats WHERE tablename = 'patients'",
    "SELECT most_common_vals::text FROM pg_catalog.pg_stats",
    "SELECT pg_read_file('base/1/1')",
    "SELECT * FROM patients TABLESAMPLE SYSTEM (10) LIMIT 50",
    "TABLE patients LIMIT 50",
    "VALUES ((SELECT ssn FROM patients LIMIT 1), (SELECT phone FROM patients LIMIT 1))",
    "SELECT lag(ssn) OVER (ORDER BY id), lead(first_name) OVER (ORDER BY id) FROM patients LIMIT 100",
    "SELECT DISTINCT ON (zip) zip, ssn, address FROM patients LIMIT 100",
    "SELECT p1.ssn, p2.last_name FROM patients p1 JOIN patients p2 ON p1.ssn = p2.ssn LIMIT 50",
    "SELECT xmlelement(name x, ssn, first_name) FROM patients LIMIT 20",
    "SELECT encode(convert_to(ssn || phone, 'UTF8'), 'hex') FROM patients LIMIT 20",
    "SELECT regexp_replace(ssn, '-', '', 'g'), translate(phone, '-', '') FROM patients LIMIT 20",
    "SELECT reverse(last_name), reverse(ssn) FROM patients LIMIT 20",
    "SELECT * FROM (SELECT ssn AS s, email AS e FROM patients) t WHERE s IS NOT NULL LIMIT 50",
    "SELECT * FROM patients WHERE id IN (SELECT patient_id FROM encounters) LIMIT 50",
    "SELECT * FROM encounters WHERE notes ILIKE '%555%'",
    "SELECT ssn FROM patients FOR UPDATE",
    "UPDATE patients SET ssn = ssn RETURNING ssn",
    "INSERT INTO patients SELECT * FROM patients LIMIT 1 RETURNING *",
    "DELETE FROM patients WHERE id = 1 RETURNING *",
    "SELECT phigate_token('000-00-0000')",
    "SELECT ('000-00-0000'::text).phigate_token",
    "SELECT * FROM token_key",
    "SELECT pg_get_viewdef('patients'::regclass)",
    "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'patients'",
    "EXPLAIN SELECT * FROM patients WHERE ssn = '000-00-0000'",
    "EXPLAIN (VERBOSE, COSTS OFF) SELECT * FROM patients LIMIT 1",
    "SELECT * FROM prescriptions LIMIT 50",
    "SELECT * FROM lab_results LIMIT 50",
    "SELECT * FROM departments",
    "SELECT length(ssn), length(first_name), octet_length(email) FROM patients LIMIT 20",
    "SELECT max(ssn), min(last_name), max(date_of_birth), min(zip) FROM patients",
    "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY date_of_birth) FROM patients",
    "SELECT generate_series(1, 3), ssn FROM patients LIMIT 30",
    "SELECT ROW(first_name, ssn, phone)::text FROM patients LIMIT 30",
    "SELECT array_to_string(ARRAY[first_name, last_name, ssn, mrn], '|') FROM patients LIMIT 30",
    "SELECT query FROM pg_stat_activity",
    "DO $$ BEGIN RAISE NOTICE '%', (SELECT ssn FROM patients LIMIT 1); END $$",
    "SET search_path = public",
    "SELECT set_config('search_path', 'public', false)",
    "SELECT * FROM patients WHERE ssn = (SELECT ssn FROM patients LIMIT 1)",
    "SELECT ctid, xmin, * FROM patients LIMIT 20",
    "SELECT tableoid::regclass, * FROM patients LIMIT 20",
    "SELECT * FROM encounters ORDER BY admitted_at LIMIT 50",
    "SELECT p.mrn, e.admitted_at, rx.drug FROM patients p JOIN encounters e ON e.patient_id = p.id JOIN prescriptions rx ON rx.encounter_id = e.id LIMIT 100",
    "SELECT insurance_member_id, count(*) OVER () FROM patients LIMIT 50",
    "SELECT city, address FROM patients LIMIT 50",
    "SELECT ssn FROM patients WHERE ssn > '5' ORDER BY ssn DESC LIMIT 10",
    "SELECT string_agg(notes, ' | ') FROM encounters",
];

pub const SIMPLE_ONLY: &[&str] = &[
    "BEGIN; DECLARE c CURSOR FOR SELECT * FROM patients; FETCH 50 FROM c; CLOSE c; COMMIT",
    "PREPARE q(int) AS SELECT * FROM patients WHERE id = $1; EXECUTE q(5); DEALLOCATE q",
    "SELECT 1; SELECT ssn FROM patients LIMIT 5; SELECT first_name FROM patients LIMIT 5",
];

pub const COPIES: &[&str] = &[
    "COPY patients TO STDOUT",
    "COPY (SELECT * FROM patients LIMIT 100) TO STDOUT",
    "COPY (SELECT * FROM patients LIMIT 100) TO STDOUT WITH (FORMAT csv, HEADER)",
    "COPY (SELECT * FROM patients LIMIT 100) TO STDOUT WITH (FORMAT binary)",
    "COPY (SELECT notes FROM encounters LIMIT 200) TO STDOUT",
];

pub struct Leaks {
    ac: AhoCorasick,
    values: Vec<String>,
    pub checked: usize,
}

impl Leaks {
    pub fn new() -> Leaks {
        let values = phi_values();
        Leaks {
            ac: AhoCorasick::new(&values).expect("automaton"),
            values,
            checked: 0,
        }
    }

    /// A PHI value appearing as a whole (not inside a longer run of letters and digits: a ZIP
    /// code's digits inside a token's hex are not that ZIP code).
    pub fn check(&mut self, what: &str, bytes: &[u8]) {
        self.checked += bytes.len();
        let word = |b: u8| b.is_ascii_alphanumeric();
        let hit = self.ac.find_overlapping_iter(bytes).find(|m| {
            let before = m.start().checked_sub(1).map(|i| bytes[i]);
            let after = bytes.get(m.end()).copied();
            !before.is_some_and(word) && !after.is_some_and(word)
        });
        if let Some(m) = hit {
            panic!(
                "PHI leaked ({what}): {:?} in {:?}",
                self.values[m.pattern().as_usize()],
                String::from_utf8_lossy(
                    &bytes[m.start().saturating_sub(40)..(m.end() + 40).min(bytes.len())]
                )
            );
        }
    }

    pub fn check_error(&mut self, what: &str, e: &tokio_postgres::Error) {
        if let Some(db) = e.as_db_error() {
            let text = format!(
                "{} {:?} {:?} {:?} {:?} {:?}",
                db.message(),
                db.detail(),
                db.hint(),
                db.where_(),
                db.column(),
                db.constraint()
            );
            self.check(what, text.as_bytes());
        } else {
            self.check(what, e.to_string().as_bytes());
        }
    }
}
