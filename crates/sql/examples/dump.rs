//! Prints the analysis of each argument (and with `--tree`, the parse tree).
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tree = args.iter().any(|a| a == "--tree");
    for sql in args.iter().filter(|a| *a != "--tree") {
        if tree {
            if let Ok(r) = pg_query::parse(sql, 0) {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r.protobuf).unwrap_or_default()
                );
            }
        }
        println!("{sql}\n  => {:#?}", phigate_sql::analyze(sql));
    }
}
