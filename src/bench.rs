//! `cascade bench …` (with `--features bench`): the benchmarks whose
//! results go to docs/benchmarks.md. They drive real services with
//! `testkit`'s clients and bots, which is why they are not in the release
//! binary.

use clap::{Args, Subcommand};

use crate::runtime;

/// Runs one benchmark.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Api(args) => bench_api(args),
        BenchCommand::Ws(args) => bench_ws(args),
        BenchCommand::Placement(args) => bench_placement(&args),
        BenchCommand::Sfu(args) => bench_sfu(&args),
        BenchCommand::Relay(args) => bench_relay(&args),
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Message sends and page reads through the REST API against Postgres,
    /// beside the store alone and the HTTP ceiling, in one run.
    Api(ApiBenchArgs),
    /// WebSocket connections held by one replica, and fan-out latency to a
    /// group with and without them.
    Ws(WsBenchArgs),
    /// Simulated call placement: load balance, churn, decisions per second.
    Placement(PlacementBenchArgs),
    /// One publisher to N subscribers through a real edge, ramped, beside a
    /// raw UDP forwarder in the same run.
    Sfu(SfuBenchArgs),
    /// One relay hop (a `cascade relay` process): packets per second per
    /// core and added latency, beside a raw UDP forwarder in the same run.
    Relay(RelayBenchArgs),
}

#[derive(Debug, Args)]
pub struct RelayBenchArgs {
    /// Publisher packet rates of the ramp, per second, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [5_000u64, 20_000, 50_000, 100_000])]
    rates: Vec<u64>,
    /// Subscriber links behind the relay.
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// Payload bytes per packet after the RTP header.
    #[arg(long, default_value_t = 1100)]
    payload: usize,
    /// Seconds each step is measured.
    #[arg(long, default_value_t = 5)]
    step_secs: u64,
}

#[derive(Debug, Args)]
pub struct SfuBenchArgs {
    /// Subscriber counts of the ramp, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 10, 25, 50, 100, 150])]
    subscribers: Vec<usize>,
    /// Seconds each step is measured.
    #[arg(long, default_value_t = 5)]
    step_secs: u64,
    /// The publisher's video bitrate, kbit/s.
    #[arg(long, default_value_t = 1500)]
    video_kbps: u32,
    /// The publisher sends three simulcast layers (the top one at
    /// `--video-kbps`, then a third and a tenth of it) and subscribers ask
    /// for q, h and f in turn.
    #[arg(long)]
    simulcast: bool,
    /// The edge's media workers; a call spreads over them past
    /// `--spread-above` sessions on its home worker.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// `edge.spread_calls_above` for the edge.
    #[arg(long, default_value_t = 50)]
    spread_above: usize,
    /// Calls on the edge; the subscribers of a step are dealt over them
    /// (subscriber i joins call i % calls).
    #[arg(long, default_value_t = 1)]
    calls: usize,
    /// Publishers in each call (each sends `--video-kbps` of video and
    /// Opus); a subscriber receives every publisher of its call.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Pin the edge to the first `--workers` CPUs and the bots and control
    /// plane to the rest (needs more CPUs than workers), so neither takes
    /// the other's cores.
    #[arg(long)]
    pin_cpus: bool,
}

#[derive(Debug, Args)]
pub struct PlacementBenchArgs {
    /// Regions.
    #[arg(long, default_value_t = 20)]
    regions: usize,
    /// Edges per region.
    #[arg(long, default_value_t = 50)]
    edges: usize,
    /// Calls.
    #[arg(long, default_value_t = 1_000_000)]
    calls: usize,
    /// Bounded-load slack: capacity = (1 + slack) × mean load.
    #[arg(long, default_value_t = 0.10)]
    slack: f64,
}

#[derive(Debug, Args)]
pub struct WsBenchArgs {
    /// Postgres server for a scratch database; without it, embedded SQLite.
    #[arg(long)]
    database_url: Option<String>,
    /// Connections to hold in total.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Members of the group messages are sent to.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Messages per phase.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Messages per second.
    #[arg(long, default_value_t = 20)]
    rate: u32,
}

#[derive(Debug, Args)]
pub struct ApiBenchArgs {
    /// Postgres server where a scratch database is created and dropped.
    #[arg(
        long,
        env = "TEST_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Seconds each workload runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Group conversations the traffic is spread over.
    #[arg(long, default_value_t = 64)]
    conversations: usize,
    /// Messages per conversation before the read workloads.
    #[arg(long, default_value_t = 500)]
    history: usize,
}

/// Runs `cascade bench api` and prints a Markdown report.
#[allow(clippy::print_stdout, reason = "the report is the command's output")]
fn bench_api(args: ApiBenchArgs) -> anyhow::Result<()> {
    let options = testkit::bench::api::ApiBenchOptions {
        admin_database_url: args.database_url,
        duration: std::time::Duration::from_secs(args.seconds),
        clients: args.clients,
        conversations: args.conversations,
        history: args.history,
    };
    let runtime = runtime()?;
    let results = runtime.block_on(testkit::bench::api::run(&options));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "cascade bench api: {} clients, {} conversations, {} s per workload, {cores} cores ({cpu})\n",
        options.clients,
        options.conversations,
        options.duration.as_secs(),
    );
    print!("{}", testkit::bench::markdown(&results));
    Ok(())
}

/// Runs `cascade bench placement` and prints a Markdown report.
#[allow(clippy::print_stdout, reason = "the report is the command's output")]
fn bench_placement(args: &PlacementBenchArgs) -> anyhow::Result<()> {
    let options = testkit::bench::placement::PlacementOptions {
        regions: args.regions,
        edges: args.edges,
        calls: args.calls,
        slack: args.slack,
    };
    anyhow::ensure!(
        options.regions > 0 && options.edges > 7 && options.calls > 0,
        "need at least one region, 8 edges and one call"
    );
    let rows = testkit::bench::placement::run(&options);
    println!(
        "cascade bench placement: {} regions × {} edges, {} calls, slack {}\n",
        options.regions, options.edges, options.calls, options.slack
    );
    println!("| metric | value | aim |\n|---|---:|---|");
    for row in rows {
        println!("| {} | {} | {} |", row.metric, row.value, row.aim);
    }
    Ok(())
}

/// Runs `cascade bench ws` and prints a Markdown report.
#[allow(clippy::print_stdout, reason = "the report is the command's output")]
fn bench_ws(args: WsBenchArgs) -> anyhow::Result<()> {
    let options = testkit::bench::ws::WsBenchOptions {
        admin_database_url: args.database_url,
        connections: args.connections,
        members: args.members,
        messages: args.messages,
        rate: args.rate,
    };
    let runtime = runtime()?;
    let report = runtime.block_on(testkit::bench::ws::run(&options));
    println!(
        "cascade bench ws: {} connections, {}-member group, {} messages per phase at {}/s, {} cores\n",
        options.connections,
        options.members,
        options.messages,
        options.rate,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    print!("{}", testkit::bench::markdown(&report.phases));
    let idle = options.connections.saturating_sub(options.members).max(1) as f64;
    println!(
        "\nheld at the end: {} of {} ({} failed or closed); opening the idle ones took {:.1} s",
        report.held,
        options.connections,
        report.failed,
        report.connect_time.as_secs_f64()
    );
    println!(
        "server RSS: {:.1} MiB before the idle connections, {:.1} MiB after ({:.1} KiB per connection); server CPU {:.1} s",
        report.rss.0 as f64 / 1048576.0,
        report.rss.1 as f64 / 1048576.0,
        (report.rss.1 as f64 - report.rss.0 as f64) / 1024.0 / idle,
        report.server_cpu_secs
    );
    if let [quiet, loaded] = report.phases.as_slice() {
        println!(
            "p99 with all connections / p99 with members only: {:.2}",
            loaded.p99.as_secs_f64() / quiet.p99.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}

/// Runs `cascade bench relay` and prints a Markdown report.
#[allow(clippy::print_stdout, reason = "the report is the command's output")]
fn bench_relay(args: &RelayBenchArgs) -> anyhow::Result<()> {
    if args.rates.is_empty() || args.rates.contains(&0) || args.subscribers == 0 {
        anyhow::bail!("--rates needs rates above 0 and --subscribers at least 1");
    }
    let options = testkit::bench::relay::RelayBenchOptions {
        rates: args.rates.clone(),
        subscribers: args.subscribers.min(50),
        payload: args.payload.clamp(16, 1200),
        step: std::time::Duration::from_secs(args.step_secs.max(1)),
    };
    let runtime = runtime()?;
    let report = runtime.block_on(testkit::bench::relay::run(&options));
    println!(
        "cascade bench relay: {} B packets ({} B payload + relay and RTP headers), {} subscriber link(s), {} s per step, {} cores ({})\n",
        options.payload + 19,
        options.payload,
        options.subscribers,
        options.step.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
    );
    print!("{}", testkit::bench::relay::markdown(&report));
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default()
}

/// Runs `cascade bench sfu` and prints a Markdown report.
#[allow(clippy::print_stdout, reason = "the report is the command's output")]
fn bench_sfu(args: &SfuBenchArgs) -> anyhow::Result<()> {
    if args.subscribers.is_empty() || args.subscribers.contains(&0) {
        anyhow::bail!("--subscribers needs one or more counts above 0");
    }
    let options = testkit::bench::sfu::SfuBenchOptions {
        subscribers: args.subscribers.clone(),
        step: std::time::Duration::from_secs(args.step_secs.max(1)),
        video_kbps: args.video_kbps.clamp(50, 20_000),
        simulcast: args.simulcast,
        workers: args.workers.clamp(1, 64),
        spread_above: args.spread_above.max(1),
        calls: args.calls.clamp(1, 1000),
        publishers: args.publishers.clamp(1, 16),
        pin_cpus: args.pin_cpus,
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if options.pin_cpus && cpus <= options.workers {
        anyhow::bail!(
            "--pin-cpus needs more CPUs ({cpus}) than edge workers ({})",
            options.workers
        );
    }
    let runtime = runtime()?;
    let report = runtime.block_on(testkit::bench::sfu::run(&options));
    let cpu = cpu_model();
    println!(
        "cascade bench sfu: {} call(s) × {} publisher(s) of VP8 {} kbit/s ({} B frames at 30/s){} + Opus, subscribers dealt over the calls, {} s per step, {} edge worker(s) (a call spreads past {} sessions), {} cores ({cpu})\n",
        options.calls,
        options.publishers,
        options.video_kbps,
        report.delta_body + 11,
        if options.simulcast {
            ", simulcast q/h/f (a tenth, a third, all of it), subscribers asking q, h, f in turn"
        } else {
            ""
        },
        options.step.as_secs(),
        options.workers,
        options.spread_above,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    print!("{}", testkit::bench::sfu::markdown(&report));
    Ok(())
}
