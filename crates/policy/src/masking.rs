//! PHI tags and masking strategies: which columns hold which kind of identifier, and what a
//! masked role sees instead. Pure data and decisions; the gateway turns them into SQL.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Kinds of protected health information (the HIPAA Safe Harbor identifiers, and then some).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PhiType {
    Name,
    Ssn,
    DateOfBirth,
    /// Any other date tied to an individual (admission, discharge, death).
    Date,
    Age,
    Email,
    Phone,
    Address,
    Zip,
    Mrn,
    MemberId,
    FreeText,
    Custom,
}

/// What a masked role sees in place of a value. Every strategy keeps the column's type: where a
/// type has no safe substitute the value becomes NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// A fixed placeholder (`[redacted]` for text; NULL for other types).
    Redact,
    /// Part of the value: SSN and phone → last four digits (`***-**-6789`), e-mail → domain.
    Partial,
    /// Less precise: dates → January 1st of the year, ZIP → first three digits (Safe Harbor:
    /// `000` for sparsely populated areas), ages over 89 → 90.
    Generalize,
    /// NULL.
    Null,
    /// A deterministic keyed token (HMAC-SHA-256 under the gateway's key): equal values give
    /// equal tokens, so joins and GROUP BY still work; integers stay integers, UUIDs UUIDs.
    Token,
    /// The value as stored (an explicit exception for this role and type).
    Clear,
}

impl PhiType {
    /// The strategy a masked role gets when its config names none for this type.
    pub fn default_strategy(self) -> Strategy {
        match self {
            PhiType::Name | PhiType::Mrn | PhiType::MemberId | PhiType::Email => Strategy::Token,
            PhiType::Ssn | PhiType::Phone => Strategy::Partial,
            PhiType::DateOfBirth | PhiType::Date | PhiType::Zip | PhiType::Age => {
                Strategy::Generalize
            }
            PhiType::Address | PhiType::FreeText | PhiType::Custom => Strategy::Redact,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PhiType::Name => "name",
            PhiType::Ssn => "ssn",
            PhiType::DateOfBirth => "date_of_birth",
            PhiType::Date => "date",
            PhiType::Age => "age",
            PhiType::Email => "email",
            PhiType::Phone => "phone",
            PhiType::Address => "address",
            PhiType::Zip => "zip",
            PhiType::Mrn => "mrn",
            PhiType::MemberId => "member_id",
            PhiType::FreeText => "free_text",
            PhiType::Custom => "custom",
        }
    }
}

/// The PHI columns of one table.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PhiTableConfig {
    /// `schema.table` (`public` if no schema is given).
    pub table: String,
    /// Column → kind of PHI, e.g. `{ ssn = "ssn", first_name = "name" }`.
    pub columns: BTreeMap<String, PhiType>,
}

impl PhiTableConfig {
    /// (schema, table).
    pub fn qualified(&self) -> (String, String) {
        match self.table.split_once('.') {
            Some((s, t)) => (s.to_owned(), t.to_owned()),
            None => ("public".to_owned(), self.table.clone()),
        }
    }
}

/// The strategy `role_overrides` gives `t`, else its default.
pub fn strategy_for(role_overrides: &BTreeMap<PhiType, Strategy>, t: PhiType) -> Strategy {
    role_overrides
        .get(&t)
        .copied()
        .unwrap_or_else(|| t.default_strategy())
}
