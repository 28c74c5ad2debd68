//! `cascade`: the one binary that runs every part of Cascade.
//!
//! Each subcommand loads the shared configuration (defaults → `--config`
//! file → `CASCADE_` environment variables), then starts one service through
//! the common `build` → `addrs` → `run` shape of the `service` crate.

mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use control_plane::ControlPlane;
use service::Service;
use service::config::Loaded;
use service::lifecycle::Shutdown;

use crate::config::CascadeConfig;

/// Exit code for configuration errors (like a usage error: the operator must
/// fix the input, retrying will not help).
const EXIT_BAD_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "cascade",
    version,
    about = "Chat, calls and an edge-distributed WebRTC SFU cluster"
)]
struct Cli {
    /// TOML configuration file (also `CASCADE_CONFIG`). Environment variables
    /// `CASCADE_SECTION__KEY` override it.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a control-plane replica: accounts, conversations, calls, placement.
    ControlPlane(ServiceArgs),
}

#[derive(Debug, Args)]
struct ServiceArgs {
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match service::config::load::<CascadeConfig>(
        service::config::config_file(cli.config).as_deref(),
    ) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("cascade: invalid configuration:");
            for problem in &error.problems {
                eprintln!("  {problem}");
            }
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };

    match cli.command {
        Command::ControlPlane(args) => {
            if args.print_config {
                return print_config(&loaded);
            }
            let config = loaded.config;
            service::telemetry::init_tracing(&config.telemetry);
            exit_with(run::<ControlPlane>(config.control_plane))
        }
    }
}

#[allow(
    clippy::print_stdout,
    reason = "printing the configuration is the command's output"
)]
fn print_config(loaded: &Loaded<CascadeConfig>) -> ExitCode {
    print!("{}", loaded.to_redacted_toml());
    ExitCode::SUCCESS
}

/// Starts `S` on a fresh runtime and serves until SIGTERM or Ctrl-C.
fn run<S: Service>(config: S::Config) -> anyhow::Result<()> {
    // One crypto provider for the whole process (aws-lc-rs); rustls panics
    // at first use if it has to guess between two.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Listen for signals before binding, so an early SIGTERM is not lost.
        let shutdown = Shutdown::on_termination_signal();
        let app = S::build(config).await.context("start-up failed")?;
        tracing::info!(addrs = ?app.addrs(), "serving");
        app.run(shutdown).await.context("service failed")
    })
}

fn exit_with(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("cascade: {error:#}");
            ExitCode::FAILURE
        }
    }
}
