//! Commands for installing and running phigate as a service: shell completions and man pages
//! generated from this CLI's own definition, a self-signed certificate for first runs, and a
//! health probe for container runtimes (the image has no curl).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory;

use super::Cli;

#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

/// Prints the completion script for `shell` on stdout.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    // Into a buffer first: the generator panics on a write error (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "phigate", &mut script);
    std::io::stdout().write_all(&script)?;
    Ok(())
}

#[derive(clap::Args)]
pub struct ManArgs {
    /// Where to write the pages: phigate.1 and one page per command (phigate-serve.1, ...).
    #[arg(long)]
    dir: PathBuf,
}

/// Writes the man pages of every command into `--dir`.
pub fn man(args: ManArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd, &args.dir)?;
    let mut written: Vec<_> = std::fs::read_dir(&args.dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "1"))
        .collect();
    written.sort_by_key(|e| e.file_name());
    println!(
        "wrote {} man pages to {}",
        written.len(),
        args.dir.display()
    );
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum TlsCommand {
    /// Write a self-signed certificate and its key (owner-only) for a first run; clients
    /// verify it with sslrootcert=<cert>. Keeps an existing pair unless --force. Production
    /// certificates come from your CA.
    SelfSigned {
        /// The certificate file to write (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// The private key file to write (PEM, mode 0600).
        #[arg(long)]
        key: PathBuf,
        /// A DNS name or IP address the certificate is for (repeatable).
        #[arg(long = "name", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
        names: Vec<String>,
        /// Replace an existing pair.
        #[arg(long)]
        force: bool,
    },
}

pub fn tls(command: TlsCommand) -> anyhow::Result<()> {
    match command {
        TlsCommand::SelfSigned {
            cert,
            key,
            names,
            force,
        } => self_signed(&cert, &key, &names, force),
    }
}

fn self_signed(cert: &Path, key: &Path, names: &[String], force: bool) -> anyhow::Result<()> {
    match (cert.exists(), key.exists(), force) {
        (true, true, false) => {
            // Already there: a restarted container keeps the certificate clients trust.
            crate::tls::server_config(cert, key)?;
            println!("{} and {} exist; kept", cert.display(), key.display());
            return Ok(());
        }
        (true, false, false) | (false, true, false) => anyhow::bail!(
            "only one of {} and {} exists; give --force to write a new pair",
            cert.display(),
            key.display()
        ),
        _ => {}
    }
    let (cert_pem, key_pem) = crate::tls::self_signed(names)?;
    for path in [cert, key] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::fsutil::private_dir_all(dir)?;
        }
    }
    crate::fsutil::write_private_atomic(key, key_pem.as_bytes())?;
    crate::fsutil::write_private_atomic(cert, cert_pem.as_bytes())?;
    println!(
        "wrote a self-signed certificate for {} to {} (key {})",
        names.join(", "),
        cert.display(),
        key.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct HealthcheckArgs {
    /// The probe to ask: /healthz (alive) or /readyz (accepts sessions, reaches the database).
    #[arg(long, default_value = "http://127.0.0.1:6544/healthz")]
    url: String,
    /// Give up after this long, e.g. 3s.
    #[arg(long, default_value = "3s")]
    timeout: humantime::Duration,
}

/// Exits 0 if the probe answers 2xx in time, else 1 with the reason (for HEALTHCHECK and
/// systemd's ExecStartPost). An https URL is verified against the system's roots and
/// `PHIGATE_CA_FILE`.
pub fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<()> {
    let timeout: Duration = args.timeout.into();
    let url = args.url;
    let status = super::runtime_with(Some(1))?.block_on(async {
        let client = crate::login::gateway_client(timeout)?;
        anyhow::Ok(client.get(&url).send().await?.status())
    });
    match status {
        Ok(s) if s.is_success() => {
            let _ = writeln!(std::io::stdout(), "{url}: {s}");
            Ok(())
        }
        Ok(s) => anyhow::bail!("{url}: {s}"),
        Err(e) => anyhow::bail!("{url}: {e:#}"),
    }
}
