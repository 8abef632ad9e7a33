//! Rules no statement can reach: rules are tried in order and the first that matches decides,
//! so a rule after a broader one (every statement it matches, the earlier one matches too) never
//! applies. Found from the rules alone, conservatively: a rule is reported only when coverage
//! is certain.

use crate::RuleConfig;

/// Statement kind names a statement with `kind` always also has (from the analysis: an INSERT
/// is a `write`, a DROP is `ddl` and `destructive`, a DO block counts as everything it could do).
fn implied(kind: &str) -> &'static [&'static str] {
    match kind {
        "insert" | "update" | "delete" | "merge" => &["write"],
        "truncate" => &["write", "destructive"],
        "create" | "alter" => &["ddl"],
        "drop" => &["ddl", "destructive"],
        "do" | "call" => &["write", "ddl", "destructive", "privilege"],
        _ => &[],
    }
}

/// Every statement of kind `later` is of kind `earlier`.
fn kind_covers(earlier: &str, later: &str) -> bool {
    earlier == later || implied(later).contains(&earlier)
}

/// A relation pattern: every relation `later` matches, `earlier` matches.
fn relation_covers(earlier: &str, later: &str) -> bool {
    if earlier == later || earlier == "*" || earlier == "*.*" {
        return true;
    }
    match (earlier.split_once('.'), later.split_once('.')) {
        // `name` is that name in any schema.
        (None, Some((_, name))) => !earlier.contains('*') && earlier == name,
        (Some((schema, "*")), Some((s, _))) => schema == s,
        _ => false,
    }
}

fn function_covers(earlier: &str, later: &str) -> bool {
    earlier == later || (!earlier.contains('.') && later.rsplit('.').next() == Some(earlier))
}

/// A condition list (empty: no condition): every statement meeting `later`'s meets `earlier`'s.
fn list_covers(earlier: &[String], later: &[String], covers: fn(&str, &str) -> bool) -> bool {
    earlier.is_empty()
        || (!later.is_empty() && later.iter().all(|l| earlier.iter().any(|e| covers(e, l))))
}

/// Every statement `later` matches, `earlier` matches.
pub fn covers(earlier: &RuleConfig, later: &RuleConfig) -> bool {
    let roles = earlier.roles.is_empty()
        || (!later.roles.is_empty() && later.roles.iter().all(|r| earlier.roles.contains(r)));
    roles
        && list_covers(&earlier.kinds, &later.kinds, kind_covers)
        && list_covers(&earlier.relations, &later.relations, relation_covers)
        && list_covers(&earlier.functions, &later.functions, function_covers)
}

/// (later, earlier) indexes of rules that can never apply, each with the first earlier rule
/// that covers it.
pub fn shadowed(rules: &[RuleConfig]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (j, later) in rules.iter().enumerate() {
        if let Some(i) = rules[..j].iter().position(|e| covers(e, later)) {
            out.push((j, i));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(roles: &[&str], kinds: &[&str], relations: &[&str], functions: &[&str]) -> RuleConfig {
        let v = |x: &[&str]| x.iter().map(|s| (*s).to_owned()).collect();
        RuleConfig {
            name: "r".into(),
            roles: v(roles),
            kinds: v(kinds),
            relations: v(relations),
            functions: v(functions),
            action: crate::RuleAction::Deny,
            hint: None,
            approval: Default::default(),
        }
    }

    #[test]
    fn broader_earlier_rules_shadow_later_ones() {
        let cases = [
            // (earlier, later, shadowed)
            (
                rule(&[], &["write"], &[], &[]),
                rule(&["a"], &["insert"], &[], &[]),
                true,
            ),
            (
                rule(&["a"], &["write"], &[], &[]),
                rule(&[], &["insert"], &[], &[]),
                false,
            ),
            (
                rule(&["a", "b"], &[], &[], &[]),
                rule(&["a"], &["drop"], &[], &[]),
                true,
            ),
            (
                rule(&[], &["ddl"], &[], &[]),
                rule(&[], &["drop"], &[], &[]),
                true,
            ),
            (
                rule(&[], &["drop"], &[], &[]),
                rule(&[], &["ddl"], &[], &[]),
                false,
            ),
            (
                rule(&[], &["insert"], &[], &[]),
                rule(&[], &["write"], &[], &[]),
                false,
            ),
            (
                rule(&[], &[], &["public.*"], &[]),
                rule(&[], &[], &["public.patients"], &[]),
                true,
            ),
            (
                rule(&[], &[], &["patients"], &[]),
                rule(&[], &[], &["public.patients"], &[]),
                true,
            ),
            (
                rule(&[], &[], &["public.patients"], &[]),
                rule(&[], &[], &["patients"], &[]),
                false,
            ),
            (
                rule(&[], &[], &["public.*"], &[]),
                rule(&[], &[], &[], &[]),
                false,
            ),
            (
                rule(&[], &[], &[], &["dblink"]),
                rule(&[], &[], &[], &["public.dblink"]),
                true,
            ),
            (
                rule(&[], &["delete"], &[], &[]),
                rule(&[], &["update"], &[], &[]),
                false,
            ),
        ];
        for (i, (earlier, later, want)) in cases.iter().enumerate() {
            assert_eq!(covers(earlier, later), *want, "case {i}");
        }
        let rules = [
            rule(&[], &["write"], &[], &[]),
            rule(&[], &["select"], &[], &[]),
            rule(&["a"], &["update"], &[], &[]),
        ];
        assert_eq!(shadowed(&rules), vec![(2, 0)]);
    }
}
