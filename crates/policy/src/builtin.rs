//! The built-in knowledge policy relies on: dangerous functions, settings a restricted role may
//! change, catalog relations, and the catalog views that leak data.

use phigate_sql::{FuncName, RelName};

/// Every kind name a rule may use.
pub const KIND_NAMES: &[&str] = &[
    "select",
    "insert",
    "update",
    "delete",
    "merge",
    "write",
    "truncate",
    "destructive",
    "ddl",
    "create",
    "alter",
    "drop",
    "copy",
    "explain",
    "prepare",
    "execute",
    "deallocate",
    "cursor",
    "do",
    "call",
    "set",
    "show",
    "transaction",
    "listen",
    "notify",
    "privilege",
    "lock",
    "maintenance",
    "session",
    "other",
];

/// Functions refused to every role unless its `allow_functions` names them: they read or write
/// server files, large objects or other databases, signal backends, change settings, or run SQL
/// text phigate never sees.
const DANGEROUS: &[&str] = &[
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_ls_logicalsnapdir",
    "pg_ls_logicalmapdir",
    "pg_ls_replslotdir",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_logdir_ls",
    "lo_import",
    "lo_export",
    "lo_unlink",
    "lo_create",
    "lo_creat",
    "lo_open",
    "lo_put",
    "lo_get",
    "lo_from_bytea",
    "lo_truncate",
    "lo_truncate64",
    "loread",
    "lowrite",
    "lo_close",
    "lo_lseek",
    "lo_lseek64",
    "lo_tell",
    "lo_tell64",
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "dblink_connect_u",
    "dblink_send_query",
    "dblink_get_result",
    "dblink_open",
    "dblink_fetch",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_rotate_logfile_old",
    "set_config",
    "pg_switch_wal",
    "pg_promote",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_replication_slot_advance",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_peek_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_logical_emit_message",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "query_to_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xml_and_xmlschema",
    "table_to_xmlschema",
    "schema_to_xml",
    "schema_to_xml_and_xmlschema",
    "schema_to_xmlschema",
    "database_to_xml",
    "database_to_xml_and_xmlschema",
    "database_to_xmlschema",
    "pg_import_system_collations",
    "pg_stat_reset",
    "pg_stat_reset_shared",
    "pg_stat_reset_single_table_counters",
    "pg_stat_reset_single_function_counters",
    "pg_stat_reset_slru",
    "pg_stat_reset_replication_slot",
    "pg_stat_reset_subscription_stats",
    "pg_stat_statements_reset",
    "setval",
    "pg_advisory_lock",
    "pg_advisory_xact_lock",
    "pg_log_backend_memory_contexts",
    "pg_nextoid",
];

pub fn is_dangerous(f: &FuncName) -> bool {
    matches!(
        f.schema.as_deref(),
        None | Some("pg_catalog") | Some("public")
    ) && DANGEROUS.contains(&f.name.as_str())
}

/// Built-in functions that return other sessions' statements or column statistics.
pub fn leaks_via_function(name: &str) -> bool {
    matches!(
        name,
        "pg_stat_get_activity"
            | "pg_stat_statements"
            | "pg_stat_statements_info"
            | "pg_get_backend_memory_contexts"
    )
}

/// Settings a restricted role may change: presentation and harmless client-side choices.
pub const SAFE_SETTINGS: &[&str] = &[
    "application_name",
    "datestyle",
    "timezone",
    "time zone",
    "intervalstyle",
    "extra_float_digits",
    "client_min_messages",
    "bytea_output",
    "transaction",
    "session characteristics",
    "transaction_isolation",
    "default_transaction_isolation",
    "lock_timeout",
    "xmloption",
    "standard_conforming_strings",
    "escape_string_warning",
    "jit",
    "enable_seqscan",
    "enable_indexscan",
    "enable_bitmapscan",
    "enable_hashjoin",
    "enable_mergejoin",
    "enable_nestloop",
    "work_mem",
];

/// Catalog relations that expose table contents (statistics: most common values, histograms)
/// or other sessions' statements and credentials.
const LEAKS: &[&str] = &[
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic",
    "pg_statistic_ext",
    "pg_statistic_ext_data",
    "pg_stat_statements",
    "pg_stat_statements_info",
    "pg_stat_activity",
    "pg_authid",
    "pg_shadow",
    "pg_user_mapping",
    "pg_user_mappings",
    "pg_largeobject",
    "pg_largeobject_metadata",
    "pg_file_settings",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_backend_memory_contexts",
    "pg_prepared_xacts",
];

pub fn leaks_data(rel: &RelName) -> bool {
    matches!(
        rel.schema.as_deref(),
        Some("pg_catalog") | Some("public") | None
    ) && LEAKS.contains(&rel.name.as_str())
}

/// Unqualified names that resolve to `pg_catalog` (searched before the search_path).
pub fn is_catalog_name(name: &str) -> bool {
    name.starts_with("pg_") && name.len() > 3
}

/// Relations every role may read: the system catalogs and information_schema (clients use them
/// for `\d`, metadata and type lookups). The leaking ones are refused before this applies.
pub fn is_catalog(rel: &RelName) -> bool {
    matches!(
        rel.schema.as_deref(),
        Some("pg_catalog") | Some("information_schema")
    )
}
