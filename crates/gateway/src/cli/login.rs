//! `phigate login`: sign in with the identity provider for a short-lived gateway token.

#[derive(clap::Args)]
pub struct LoginArgs {
    /// The gateway's HTTP address.
    #[arg(long, env = "PHIGATE_URL")]
    url: String,
    /// Which configured issuer to sign in with (when the gateway trusts several).
    #[arg(long)]
    issuer: Option<String>,
    /// Use the device flow (for a machine without a browser) instead of a browser redirect.
    #[arg(long)]
    device: bool,
    /// Print the sign-in address instead of opening a browser.
    #[arg(long)]
    no_browser: bool,
    /// Role to put in the printed connection string.
    #[arg(long)]
    role: Option<String>,
    /// Database for the printed connection string.
    #[arg(long)]
    database: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: LoginArgs) -> anyhow::Result<()> {
    super::runtime().and_then(|rt| {
        rt.block_on(crate::login::run(crate::login::LoginOptions {
            url: args.url,
            issuer: args.issuer,
            device: args.device,
            open_browser: !args.no_browser,
            role: args.role,
            database: args.database,
            json: args.json,
        }))
    })
}
