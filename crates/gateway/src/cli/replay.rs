//! `phigate replay`: a recorded session step by step, with its original timing.

use std::path::PathBuf;

use super::AuditDir;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The session's id (from `phigate sessions list`).
    session: String,
    #[command(flatten)]
    dir: AuditDir,
    /// Where the recordings are (default: the config's recording.dir, or the data
    /// directory's recordings/).
    #[arg(long)]
    recordings_dir: Option<PathBuf>,
    /// Playback speed: 2 is twice as fast; 0 prints everything at once.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Wait for Enter before each step.
    #[arg(long)]
    step: bool,
    /// Print the session as one JSON document (no waiting).
    #[arg(long)]
    json: bool,
    /// The recording key, for encrypted recordings (or PHIGATE_RECORDING_KEY, 64 hex
    /// digits).
    #[arg(long)]
    key_file: Option<PathBuf>,
}

pub fn run(a: ReplayArgs) -> anyhow::Result<()> {
    use crate::recording::{file::Key, replay};
    use std::io::{BufRead, Write};
    let key = match (&a.key_file, std::env::var("PHIGATE_RECORDING_KEY")) {
        (Some(f), _) => Some(Key::from_file(f).map_err(anyhow::Error::msg)?),
        (None, Ok(_)) => Some(Key::from_env("PHIGATE_RECORDING_KEY").map_err(anyhow::Error::msg)?),
        (None, Err(_)) => None,
    };
    let places = a.dir.places()?;
    let recordings = a
        .recordings_dir
        .clone()
        .or(places.recordings)
        .ok_or_else(|| anyhow::anyhow!("no recordings directory: give --recordings-dir"))?;
    let r = replay::load(&places.log, &recordings, &a.session, key.as_ref())?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    if !(a.speed >= 0.0 && a.speed.is_finite()) {
        anyhow::bail!("--speed must be 0 or more");
    }
    replay::render_header(&r, &mut out)?;
    let stdin = std::io::stdin();
    let mut last = 0.0;
    for step in &r.steps {
        if a.step {
            write!(out, "-- Enter for the next step --")?;
            out.flush()?;
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 {
                break;
            }
        } else if a.speed > 0.0 {
            let wait = ((step.t_ms - last) / 1000.0 / a.speed).clamp(0.0, 3600.0);
            out.flush()?;
            std::thread::sleep(std::time::Duration::from_secs_f64(wait));
        }
        last = step.t_ms;
        replay::render_step(step, &mut out)?;
    }
    Ok(())
}
