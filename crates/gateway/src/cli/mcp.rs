//! `phigate mcp --stdio`: the MCP server for agents that start servers as processes. It relays
//! to the gateway's `/mcp` with the caller's credential and holds no database credential
//! ([`crate::mcp::stdio`]). Logs go to stderr; stdout carries only the protocol.

#[derive(clap::Args)]
pub struct McpArgs {
    /// Speak MCP on stdin/stdout (the only transport of this command; the gateway itself serves
    /// Streamable HTTP at /mcp).
    #[arg(long)]
    stdio: bool,
    /// The gateway's HTTP address.
    #[arg(long, env = "PHIGATE_URL")]
    url: String,
    /// Your credential: an OIDC or gateway token, or an API key.
    #[arg(long, env = "PHIGATE_TOKEN", hide_env_values = true)]
    token: String,
}

pub fn run(args: McpArgs) -> anyhow::Result<()> {
    if !args.stdio {
        anyhow::bail!("give --stdio (agents that speak HTTP connect to <url>/mcp directly)");
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let rt = super::runtime_with(Some(1))?;
    rt.block_on(crate::mcp::stdio::run(&args.url, &args.token))
}
