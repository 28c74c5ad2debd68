//! `cascade bench ws`: WebSocket connections held by one control-plane
//! replica and message fan-out to a group through them.
//!
//! The control plane runs as a child process (this same binary) so client
//! and server each have their own file-descriptor budget and their own CPU
//! accounting (read from `/proc`). Fan-out latency is measured twice in one
//! run, with only the group's members connected and then with the full
//! connection count held, so the ratio shows what the idle connections cost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;

use super::{ChildService, Measurement, proc_stat};
use crate::client::{ApiClient, TestUser};
use crate::ws::WsClient;

/// What to run.
#[derive(Debug, Clone)]
pub struct WsBenchOptions {
    /// Postgres server for a scratch database (`None`: embedded SQLite in a
    /// temporary directory).
    pub admin_database_url: Option<String>,
    /// Connections to hold in total.
    pub connections: usize,
    /// Members of the group messages are sent to (each with one connection).
    pub members: usize,
    /// Messages sent per phase.
    pub messages: usize,
    /// Messages per second.
    pub rate: u32,
}

/// Results of one run.
#[derive(Debug)]
pub struct WsBenchReport {
    /// Fan-out latency (send started → frame received) per phase.
    pub phases: Vec<Measurement>,
    /// Connections opened and still open at the end.
    pub held: usize,
    /// Connections that failed to open or were closed by the server.
    pub failed: usize,
    /// How long opening the idle connections took.
    pub connect_time: Duration,
    /// Server resident memory before and after opening them, bytes.
    pub rss: (u64, u64),
    /// Server CPU seconds during the whole run.
    pub server_cpu_secs: f64,
}

fn start_server(env: &[(String, String)]) -> ChildService {
    let mut env = env.to_vec();
    // Password hashing is not what is measured here.
    env.push((
        "CASCADE_CONTROL_PLANE__AUTH__ARGON2_MEMORY_KIB".into(),
        "1024".into(),
    ));
    env.push((
        "CASCADE_CONTROL_PLANE__AUTH__ARGON2_ITERATIONS".into(),
        "1".into(),
    ));
    // Every member signs up from 127.0.0.1.
    env.push((
        "CASCADE_CONTROL_PLANE__RATE_LIMITS__SIGNUPS_PER_ADDRESS".into(),
        "{limit = 100000, window_secs = 3600}".into(),
    ));
    ChildService::spawn(
        "control-plane",
        "warn,control_plane::app=info",
        &env,
        "control plane bound",
        "addr",
    )
}

/// Runs the benchmark.
pub async fn run(options: &WsBenchOptions) -> WsBenchReport {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let scratch = std::env::temp_dir().join(format!("cascade-bench-ws-{}", std::process::id()));
    let mut database = None;
    let mut env = vec![(
        "CASCADE_CONTROL_PLANE__DATA_DIR".to_owned(),
        scratch.to_string_lossy().into_owned(),
    )];
    if let Some(admin) = &options.admin_database_url {
        let db = crate::app::PgTestDatabase::create(admin).await;
        env.push((
            "CASCADE_CONTROL_PLANE__DATABASE__URL".to_owned(),
            db.url().to_owned(),
        ));
        database = Some(db);
    }
    let server = start_server(&env);
    let pid = server.pid();
    let (_, cpu_start) = proc_stat(pid);
    let api = ApiClient::new(&server.addr);

    // The group and its members.
    let mut members: Vec<TestUser> = Vec::new();
    for i in 0..options.members {
        members.push(api.register(&format!("member{i:04}")).await);
    }
    let others: Vec<&TestUser> = members.iter().skip(1).collect();
    let group = api.group(&members[0], "bench", &others).await;

    let start = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let received = Arc::new(AtomicU64::new(0));
    let mut member_tasks = Vec::new();
    for member in &members {
        let mut client = WsClient::connect(&server.addr, Some(&member.access), None)
            .await
            .expect("member connects");
        client.expect("ready", Duration::from_secs(10)).await;
        let (latencies, received) = (latencies.clone(), received.clone());
        member_tasks.push(tokio::spawn(async move {
            while let Ok(next) = client.next(Duration::from_secs(3600)).await {
                let Some(frame) = next else { break };
                if frame["type"] != "message.created" {
                    continue;
                }
                // The body carries the send time, in µs since `start`.
                let sent_us: u64 = frame["data"]["body"]
                    .as_str()
                    .and_then(|b| b.rsplit(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let now_us = start.elapsed().as_micros() as u64;
                latencies
                    .lock()
                    .await
                    .push(Duration::from_micros(now_us.saturating_sub(sent_us)));
                received.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let send_phase = |label: String| {
        let (api, sender, group, latencies, received) = (
            api.clone(),
            members[0].clone(),
            group.clone(),
            latencies.clone(),
            received.clone(),
        );
        let (messages, rate, fanout) = (options.messages, options.rate, options.members);
        async move {
            latencies.lock().await.clear();
            received.store(0, Ordering::Relaxed);
            let began = Instant::now();
            let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            for i in 0..messages {
                let due = began + interval * i as u32;
                tokio::time::sleep_until(due.into()).await;
                let stamp = start.elapsed().as_micros();
                let reply = api
                    .post(
                        &format!("/v1/conversations/{group}/messages"),
                        &sender,
                        json!({ "body": format!("bench {i} {stamp}") }),
                    )
                    .await;
                assert_eq!(reply.status, 201, "{}", reply.body);
            }
            let expected = (messages * fanout) as u64;
            let deadline = Instant::now() + Duration::from_secs(30);
            while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let samples = latencies.lock().await.clone();
            let missing = expected.saturating_sub(samples.len() as u64);
            Measurement::from_samples(&label, samples, missing, began.elapsed())
        }
    };

    let mut phases = Vec::new();
    phases.push(
        send_phase(format!(
            "fan-out to {} members, {} connections",
            options.members, options.members
        ))
        .await,
    );

    // Idle connections: users with up to 100 devices each.
    let (rss_before, _) = proc_stat(pid);
    let idle = options.connections.saturating_sub(options.members);
    let mut idle_users = Vec::new();
    for i in 0..idle.div_ceil(100) {
        idle_users.push(api.register(&format!("idle{i:04}")).await);
    }
    let connect_began = Instant::now();
    let closed = Arc::new(AtomicU64::new(0));
    let mut failed = 0usize;
    let mut idle_tasks = Vec::new();
    let addr = server.addr.clone();
    for chunk in (0..idle).collect::<Vec<_>>().chunks(200) {
        let opened = futures_util::future::join_all(chunk.iter().map(|i| {
            let token = idle_users[i / 100].access.clone();
            let addr = addr.clone();
            async move {
                let mut client = WsClient::connect(&addr, Some(&token), None).await.ok()?;
                client.expect("ready", Duration::from_secs(30)).await;
                Some(client)
            }
        }))
        .await;
        for client in opened {
            match client {
                Some(mut client) => {
                    let closed = closed.clone();
                    idle_tasks.push(tokio::spawn(async move {
                        // Hold the connection, reading whatever comes, until
                        // the server closes it.
                        while let Ok(_frame) = client.next(Duration::from_secs(3600)).await {}
                        closed.fetch_add(1, Ordering::Relaxed);
                    }));
                }
                None => failed += 1,
            }
        }
    }
    let connect_time = connect_began.elapsed();
    // Let the server settle (allocations, first heartbeats).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_after, _) = proc_stat(pid);
    phases.push(
        send_phase(format!(
            "fan-out to {} members, {} connections",
            options.members,
            options.members + idle - failed
        ))
        .await,
    );
    let lost = closed.load(Ordering::Relaxed) as usize;
    let held = options.members + idle - failed - lost;
    let (_, cpu_end) = proc_stat(pid);
    for task in member_tasks.into_iter().chain(idle_tasks) {
        task.abort();
    }
    drop(server);
    drop(database);
    let _ = std::fs::remove_dir_all(&scratch);
    WsBenchReport {
        phases,
        held,
        failed: failed + lost,
        connect_time,
        rss: (rss_before, rss_after),
        server_cpu_secs: cpu_end - cpu_start,
    }
}
