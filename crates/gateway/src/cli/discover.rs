//! `phigate discover`: propose PHI tags for the upstream database's columns.

use std::path::PathBuf;

use crate::config::Config;

#[derive(clap::Args)]
pub struct DiscoverArgs {
    /// The config whose upstream database is examined.
    #[arg(long, short)]
    config: PathBuf,
    /// Values sampled per text column.
    #[arg(long, default_value_t = 200)]
    sample: usize,
}

pub fn run(args: DiscoverArgs) -> anyhow::Result<()> {
    super::runtime().and_then(|rt| {
        rt.block_on(async {
            let c = Config::load(&args.config)?;
            let target = crate::upstream::UpstreamTarget::from_config(&c.upstream)?;
            print!(
                "{}",
                crate::masking::discover(&target, args.sample.clamp(1, 10_000)).await?
            );
            Ok(())
        })
    })
}
