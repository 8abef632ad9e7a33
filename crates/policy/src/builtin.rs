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
    "pg_log_backend_memory_contexts",
    "pg_nextoid",
    // Full-text search functions that run the SQL text they are given.
    "ts_stat",
    "ts_rewrite",
];

/// In any schema: extensions (dblink, adminpack, pg_stat_statements) can be installed in any
/// schema, and an unrestricted role may call `ext.dblink_exec(...)` by its qualified name.
pub fn is_dangerous(f: &FuncName) -> bool {
    DANGEROUS.contains(&f.name.as_str())
}

/// Built-in functions that return other sessions' statements or column statistics.
pub fn leaks_via_function(name: &str) -> bool {
    matches!(
        name,
        "pg_stat_get_activity"
            | "pg_stat_get_backend_activity"
            | "pg_prepared_xact"
            | "pg_show_all_file_settings"
            | "pg_hba_file_rules"
            | "pg_ident_file_mappings"
            | "pg_stat_statements"
            | "pg_stat_statements_info"
            | "pg_get_backend_memory_contexts"
    )
}

/// Settings no role may change: they change how the database reads statement text, and phigate
/// reads it as PostgreSQL does by default. With `standard_conforming_strings = off`, `'\'` no
/// longer ends a string, so `SELECT '\', ' ; DELETE FROM t; -- '` (one SELECT of two strings to
/// phigate) runs a DELETE. (`client_encoding` is not here: the gateway decodes text as the
/// database does and follows a change; restricted roles still may not change it, as any
/// setting outside [`SAFE_SETTINGS`], and set it when they connect.)
pub const PINNED_FOR_ALL: &[&str] = &["standard_conforming_strings"];

/// Settings under this prefix carry the caller's identity to the database (`phigate.subject`,
/// `phigate.role`, `phigate.issuer`): set by the gateway at startup, changed by no role, so
/// row-level security and the database's own logs can trust them.
pub const IDENTITY_SETTINGS_PREFIX: &str = "phigate.";

/// The one `phigate.*` setting a session may set: its justification for statements a reviewer
/// must approve (`SET phigate.reason = 'coding fix'`).
pub const REASON_SETTING: &str = "phigate.reason";

/// Settings a restricted role may change: presentation and harmless client-side choices.
pub const SAFE_SETTINGS: &[&str] = &[
    REASON_SETTING,
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
    "escape_string_warning",
    "jit",
    "enable_seqscan",
    "enable_indexscan",
    "enable_bitmapscan",
    "enable_hashjoin",
    "enable_mergejoin",
    "enable_nestloop",
];

/// Advisory locks are shared across every session of the database: a session holding one can
/// block other sessions, and the gateway's own provisioning. No form that takes one (blocking,
/// `try`, shared, transaction-level) is for any role unless `allow_functions` names it.
/// Releasing (`pg_advisory_unlock*`, which connection pools call on every reset) only gives
/// back what the session holds.
pub fn is_advisory_lock(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    (n.starts_with("pg_advisory_") || n.starts_with("pg_try_advisory_"))
        && !n.starts_with("pg_advisory_unlock")
}

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

/// Unqualified names that resolve to `pg_catalog` (searched before the search_path): the
/// catalog's tables and views (PostgreSQL 12 to 18). Any other name, even one starting with
/// `pg_`, is a user relation found through the search_path.
pub fn is_catalog_name(name: &str) -> bool {
    CATALOG_RELATIONS.binary_search(&name).is_ok()
}

/// The tables and views of `pg_catalog`, sorted, plus `pg_stat_statements` (an extension's
/// views, refused as leaks wherever they live).
pub(crate) const CATALOG_RELATIONS: &[&str] = &[
    "pg_aggregate",
    "pg_aios",
    "pg_am",
    "pg_amop",
    "pg_amproc",
    "pg_attrdef",
    "pg_attribute",
    "pg_auth_members",
    "pg_authid",
    "pg_available_extension_versions",
    "pg_available_extensions",
    "pg_backend_memory_contexts",
    "pg_cast",
    "pg_class",
    "pg_collation",
    "pg_config",
    "pg_constraint",
    "pg_conversion",
    "pg_cursors",
    "pg_database",
    "pg_db_role_setting",
    "pg_default_acl",
    "pg_depend",
    "pg_description",
    "pg_dsm_registry_allocations",
    "pg_enum",
    "pg_event_trigger",
    "pg_extension",
    "pg_file_settings",
    "pg_foreign_data_wrapper",
    "pg_foreign_server",
    "pg_foreign_table",
    "pg_group",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_index",
    "pg_indexes",
    "pg_inherits",
    "pg_init_privs",
    "pg_language",
    "pg_largeobject",
    "pg_largeobject_metadata",
    "pg_locks",
    "pg_matviews",
    "pg_namespace",
    "pg_opclass",
    "pg_operator",
    "pg_opfamily",
    "pg_parameter_acl",
    "pg_partitioned_table",
    "pg_pltemplate",
    "pg_policies",
    "pg_policy",
    "pg_prepared_statements",
    "pg_prepared_xacts",
    "pg_proc",
    "pg_publication",
    "pg_publication_namespace",
    "pg_publication_rel",
    "pg_publication_tables",
    "pg_range",
    "pg_replication_origin",
    "pg_replication_origin_status",
    "pg_replication_slots",
    "pg_rewrite",
    "pg_roles",
    "pg_rules",
    "pg_seclabel",
    "pg_seclabels",
    "pg_sequence",
    "pg_sequences",
    "pg_settings",
    "pg_shadow",
    "pg_shdepend",
    "pg_shdescription",
    "pg_shmem_allocations",
    "pg_shmem_allocations_numa",
    "pg_shseclabel",
    "pg_stat_activity",
    "pg_stat_all_indexes",
    "pg_stat_all_tables",
    "pg_stat_archiver",
    "pg_stat_bgwriter",
    "pg_stat_checkpointer",
    "pg_stat_database",
    "pg_stat_database_conflicts",
    "pg_stat_gssapi",
    "pg_stat_io",
    "pg_stat_progress_analyze",
    "pg_stat_progress_basebackup",
    "pg_stat_progress_cluster",
    "pg_stat_progress_copy",
    "pg_stat_progress_create_index",
    "pg_stat_progress_vacuum",
    "pg_stat_recovery_prefetch",
    "pg_stat_replication",
    "pg_stat_replication_slots",
    "pg_stat_slru",
    "pg_stat_ssl",
    "pg_stat_statements",
    "pg_stat_statements_info",
    "pg_stat_subscription",
    "pg_stat_subscription_stats",
    "pg_stat_sys_indexes",
    "pg_stat_sys_tables",
    "pg_stat_user_functions",
    "pg_stat_user_indexes",
    "pg_stat_user_tables",
    "pg_stat_wal",
    "pg_stat_wal_receiver",
    "pg_stat_xact_all_tables",
    "pg_stat_xact_sys_tables",
    "pg_stat_xact_user_functions",
    "pg_stat_xact_user_tables",
    "pg_statio_all_indexes",
    "pg_statio_all_sequences",
    "pg_statio_all_tables",
    "pg_statio_sys_indexes",
    "pg_statio_sys_sequences",
    "pg_statio_sys_tables",
    "pg_statio_user_indexes",
    "pg_statio_user_sequences",
    "pg_statio_user_tables",
    "pg_statistic",
    "pg_statistic_ext",
    "pg_statistic_ext_data",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_subscription",
    "pg_subscription_rel",
    "pg_tables",
    "pg_tablespace",
    "pg_timezone_abbrevs",
    "pg_timezone_names",
    "pg_transform",
    "pg_trigger",
    "pg_ts_config",
    "pg_ts_config_map",
    "pg_ts_dict",
    "pg_ts_parser",
    "pg_ts_template",
    "pg_type",
    "pg_user",
    "pg_user_mapping",
    "pg_user_mappings",
    "pg_views",
    "pg_wait_events",
];

/// Relations every role may read: the system catalogs and information_schema (clients use them
/// for `\d`, metadata and type lookups). The leaking ones are refused before this applies.
pub fn is_catalog(rel: &RelName) -> bool {
    matches!(
        rel.schema.as_deref(),
        Some("pg_catalog") | Some("information_schema")
    )
}
