//! SQLSTATE codes the gateway sends or reads, by the names PostgreSQL gives them
//! (Appendix A, "PostgreSQL Error Codes"). Every code phigate puts on the wire is one of these:
//! no five-character literal appears anywhere else.

/// `00000` successful_completion (an audit record's outcome for a statement that ran).
pub const SUCCESSFUL_COMPLETION: &str = "00000";
/// `01000` warning: the class of the gateway's own NoticeResponses.
pub const WARNING: &str = "01000";
/// `08006` connection_failure.
pub const CONNECTION_FAILURE: &str = "08006";
/// `08P01` protocol_violation.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// `0A000` feature_not_supported.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// `25P04` transaction_timeout (PostgreSQL 17's name; the gateway enforces it on any version).
pub const TRANSACTION_TIMEOUT: &str = "25P04";
/// `26000` invalid_sql_statement_name (a prepared statement that does not exist).
pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
/// `28000` invalid_authorization_specification.
pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
/// `28P01` invalid_password.
pub const INVALID_PASSWORD: &str = "28P01";
/// `42501` insufficient_privilege: every policy refusal.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// `42601` syntax_error.
pub const SYNTAX_ERROR: &str = "42601";
/// `53300` too_many_connections.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// `54000` program_limit_exceeded.
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
/// `55P03` lock_not_available (a lock_timeout expired).
pub const LOCK_NOT_AVAILABLE: &str = "55P03";
/// `57014` query_canceled (a held statement that timed out or was withdrawn).
pub const QUERY_CANCELED: &str = "57014";
/// `57P01` admin_shutdown.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// `57P03` cannot_connect_now.
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// `58030` io_error (the audit log cannot be written).
pub const IO_ERROR: &str = "58030";
/// `P0001` raise_exception.
pub const RAISE_EXCEPTION: &str = "P0001";
/// `XX000` internal_error.
pub const INTERNAL_ERROR: &str = "XX000";

/// Class `3D`: invalid_catalog_name (the database does not exist).
pub const CLASS_INVALID_CATALOG_NAME: &str = "3D";
/// Class `53`: insufficient_resources.
pub const CLASS_INSUFFICIENT_RESOURCES: &str = "53";
