//! `phigate demo`: a throwaway PostgreSQL with synthetic patients, the gateway in front of it.

use std::path::PathBuf;

use crate::config::LogFormat;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Port for PostgreSQL clients (0 = any free port).
    #[arg(long, default_value_t = 6543)]
    pg_port: u16,
    /// Port for HTTP (health, API) (0 = any free port).
    #[arg(long, default_value_t = 6544)]
    http_port: u16,
    /// Keep the demo's state here instead of a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Write connection details (JSON) here once the gateway accepts connections.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Run this many gateway nodes on one control database (a cluster; node i listens on
    /// --pg-port + 2i and --http-port + 2i).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    crate::logging::init(LogFormat::Text, None);
    super::runtime().and_then(|rt| {
        rt.block_on(crate::demo::run(crate::demo::DemoOptions {
            pg_port: args.pg_port,
            http_port: args.http_port,
            data_dir: args.data_dir,
            ready_file: args.ready_file,
            nodes: args.nodes,
        }))
    })
}
