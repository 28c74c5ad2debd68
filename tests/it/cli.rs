//! The `cascade` binary as an operator runs it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cascade");

/// Runs `cascade` with only the given `CASCADE_*` variables (the test
/// runner's own environment must not leak configuration in).
fn cascade(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("CASCADE_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    cascade(args, env).output().expect("run cascade")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_address_exits_2_naming_the_variable() {
    let output = run(
        &["control-plane"],
        &[("CASCADE_CONTROL_PLANE__LISTEN", "abc")],
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("CASCADE_CONTROL_PLANE__LISTEN: invalid socket address syntax (got \"abc\")"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_number_exits_2_naming_the_variable() {
    let output = run(
        &["control-plane"],
        &[("CASCADE_CONTROL_PLANE__MAX_BODY_BYTES", "ten")],
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("CASCADE_CONTROL_PLANE__MAX_BODY_BYTES: invalid type"),
        "{err}"
    );
}

#[test]
fn unknown_key_in_file_exits_2_naming_file_and_key() {
    let dir = std::env::temp_dir().join(format!("cascade-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cascade.toml");
    std::fs::write(&file, "[control_plane]\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let output = run(&["--config", file.to_str().unwrap(), "control-plane"], &[]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "control_plane.lisen in {}: unknown key",
            file.display()
        )),
        "{err}"
    );
    assert!(err.contains("listen"), "lists the valid keys: {err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn out_of_range_value_exits_2() {
    let output = run(
        &["control-plane"],
        &[("CASCADE_CONTROL_PLANE__DRAIN_TIMEOUT_SECS", "0")],
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "CASCADE_CONTROL_PLANE__DRAIN_TIMEOUT_SECS: must be between 1 and 300 (got 0)"
        ),
        "{err}"
    );
}

#[test]
fn print_config_shows_effective_values_with_secrets_redacted() {
    let output = run(
        &["control-plane", "--print-config"],
        &[
            ("CASCADE_CONTROL_PLANE__LISTEN", "0.0.0.0:9999"),
            (
                "CASCADE_CONTROL_PLANE__DATABASE__URL",
                "postgres://cascade:hunter2@db.internal:5432/cascade",
            ),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let out = String::from_utf8(output.stdout).unwrap();
    assert!(out.contains("listen = \"0.0.0.0:9999\""), "{out}");
    assert!(
        out.contains("postgres://cascade:[redacted]@db.internal:5432/cascade"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");
}

/// Starts `cascade control-plane` on a free port with JSON logs (and the
/// given extra variables) and returns the child and the address it logged.
pub(crate) fn start_control_plane(extra_env: &[(&str, &str)]) -> (Child, String) {
    let mut env = vec![
        ("CASCADE_CONTROL_PLANE__LISTEN", "127.0.0.1:0"),
        ("CASCADE_TELEMETRY__LOG_FORMAT", "json"),
    ];
    env.extend_from_slice(extra_env);
    let mut child = cascade(&["control-plane"], &env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cascade");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("cascade exited before binding")
            .expect("read log line");
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        if event["message"] == "control plane bound" {
            break event["addr"].as_str().expect("addr field").to_owned();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

#[tokio::test]
async fn sigterm_stops_a_serving_control_plane_with_exit_0_within_5s() {
    let dir = std::env::temp_dir().join(format!("cascade-sigterm-{}", std::process::id()));
    let data_dir = dir.to_str().unwrap().to_owned();
    let (mut child, addr) =
        start_control_plane(&[("CASCADE_CONTROL_PLANE__DATA_DIR", data_dir.as_str())]);
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");

    let sent = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_err(),
        "the port is closed after exit"
    );
}

/// Site administration is granted by the operator on an existing account
/// (`cascade admin grant`), and lets that user read the audit log.
#[tokio::test]
async fn operator_grants_admin_who_then_reads_the_audit_log() {
    let dir = std::env::temp_dir().join(format!("cascade-admin-{}", std::process::id()));
    let data_dir = dir.to_str().unwrap().to_owned();
    let env = [("CASCADE_CONTROL_PLANE__DATA_DIR", data_dir.as_str())];
    let (mut child, addr) = start_control_plane(&env);
    let api = testkit::client::ApiClient::new(&addr);
    let root = api.register("root").await;
    let eve = api.register("eve").await;
    api.login("eve", "my-password-typed-here").await.expect(401);
    api.get("/v1/admin/audit", &root).await.expect(404);

    let granted = run(&["admin", "grant", "root"], &env);
    assert!(granted.status.success(), "{}", stderr(&granted));
    assert!(String::from_utf8_lossy(&granted.stdout).contains("root is now a site administrator"));
    let unknown = run(&["admin", "grant", "nobody"], &env);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("no user named \"nobody\""),
        "{}",
        stderr(&unknown)
    );

    let log = api.get("/v1/admin/audit", &root).await.expect(200).body;
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions[0], "login.failed", "newest first: {actions:?}");
    assert!(actions.contains(&"user.registered"), "{actions:?}");
    assert!(
        !log.to_string().contains("my-password-typed-here"),
        "nothing typed into the login form is stored: {log}"
    );
    api.get("/v1/admin/audit", &eve).await.expect(404);

    assert!(run(&["admin", "revoke", "root"], &env).status.success());
    api.get("/v1/admin/audit", &root).await.expect(404);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

/// `cascade admin node-credential` prints the credential the control plane
/// accepts for that node, and refuses without a cluster secret.
#[test]
fn node_credentials_are_derived_from_the_cluster_secret() {
    let secret = "a-cluster-secret-of-some-length";
    let output = cascade(
        &["admin", "node-credential", "edge-eu-1"],
        &[("CASCADE_CONTROL_PLANE__CLUSTER__SECRET", secret)],
    )
    .output()
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        control_plane::api::node_credential(secret, "edge-eu-1")
    );
    let output = cascade(&["admin", "node-credential", "edge-eu-1"], &[])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cluster.secret"));
}

#[test]
fn certs_are_written_and_a_relay_without_its_files_says_which_one() {
    let dir = std::env::temp_dir().join(format!("cascade-cli-certs-{}", std::process::id()));
    let out = dir.to_str().unwrap();
    let output = run(
        &[
            "certs",
            "--out",
            out,
            "--relay",
            "eu-relay",
            "--edge",
            "eu-edge-1",
            "--web",
            "lb",
        ],
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let listed = String::from_utf8_lossy(&output.stdout).into_owned();
    for file in [
        "ca.pem",
        "ca.key",
        "eu-relay.pem",
        "eu-relay.key",
        "eu-edge-1.key",
        "lb.pem",
    ] {
        assert!(dir.join(file).exists(), "{file} missing; printed {listed}");
    }
    let bad = run(&["certs", "--out", out, "--edge", "../escape"], &[]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("name \"../escape\": use 1-64 of A-Z a-z 0-9"),
        "{}",
        stderr(&bad)
    );
    // A name without a role (the form before certificates named their
    // node) is refused with the usage, not issued as something.
    let roleless = run(&["certs", "--out", out, "eu-relay-2"], &[]);
    assert!(!roleless.status.success());
    assert!(
        stderr(&roleless).contains("--relay"),
        "{}",
        stderr(&roleless)
    );
    assert!(!dir.join("eu-relay-2.pem").exists());
    let twice = run(&["certs", "--out", out, "--relay", "x", "--edge", "x"], &[]);
    assert!(stderr(&twice).contains("named twice"), "{}", stderr(&twice));

    // A relay pointed at a key that is not there, or at a certificate in
    // place of its key, stops naming the file; nothing panics.
    let cert = dir.join("eu-relay.pem");
    let ca = dir.join("ca.pem");
    let missing = dir.join("missing.key");
    for (key, expected) in [
        (&missing, "missing.key"),
        (&cert, "eu-relay.pem: private key"),
    ] {
        let output = run(
            &["relay"],
            &[
                ("CASCADE_RELAY__LISTEN", "127.0.0.1:0"),
                ("CASCADE_RELAY__QUIC_LISTEN", "127.0.0.1:0"),
                ("CASCADE_RELAY__TLS__CA", ca.to_str().unwrap()),
                ("CASCADE_RELAY__TLS__CERT", cert.to_str().unwrap()),
                ("CASCADE_RELAY__TLS__KEY", key.to_str().unwrap()),
            ],
        );
        let err = stderr(&output);
        assert!(!output.status.success());
        assert!(err.contains(expected), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // An edge's certificate does not make a relay.
    let output = run(
        &["relay"],
        &[
            ("CASCADE_RELAY__NODE_ID", "eu-relay"),
            ("CASCADE_RELAY__LISTEN", "127.0.0.1:0"),
            ("CASCADE_RELAY__QUIC_LISTEN", "127.0.0.1:0"),
            ("CASCADE_RELAY__TLS__CA", ca.to_str().unwrap()),
            (
                "CASCADE_RELAY__TLS__CERT",
                dir.join("eu-edge-1.pem").to_str().unwrap(),
            ),
            (
                "CASCADE_RELAY__TLS__KEY",
                dir.join("eu-edge-1.key").to_str().unwrap(),
            ),
        ],
    );
    let err = stderr(&output);
    assert!(!output.status.success());
    assert!(
        err.contains("spiffe://cascade.internal/relay/eu-relay")
            && err.contains("spiffe://cascade.internal/edge/eu-edge-1"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The binary built without `--features bench` (what operators run, and
/// what this test runs) has no benchmark subcommand, hence no test code.
#[test]
fn the_default_binary_has_no_bench_subcommand() {
    let output = run(&["bench", "sfu"], &[]);
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let err = stderr(&output);
    assert!(err.contains("unrecognized subcommand 'bench'"), "{err}");
    let help = String::from_utf8_lossy(&run(&["--help"], &[]).stdout).into_owned();
    assert!(!help.contains("bench"), "{help}");
}

/// `cascade probe` (the containers' healthcheck) follows the answer: 2xx
/// is healthy; an error status, a closed port or a non-HTTP peer is not.
/// It reads no configuration, so a broken one cannot fail a healthcheck.
#[tokio::test]
async fn probe_follows_the_http_status() {
    let app = testkit::app::TestApp::spawn(testkit::app::Backend::Sqlite)
        .await
        .unwrap();
    let url = app.url("/readyz");
    let broken_config = [("CASCADE_CONTROL_PLANE__LISTEN", "not an address")];
    let ok = tokio::task::spawn_blocking(move || run(&["probe", &url], &broken_config))
        .await
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    let url = app.url("/no-such-page");
    let missing = tokio::task::spawn_blocking(move || run(&["probe", &url], &[]))
        .await
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("answered 404"),
        "{}",
        stderr(&missing)
    );
    // A UDP-only port: nothing listens on TCP there.
    let closed = run(&["probe", "http://127.0.0.1:9/readyz"], &[]);
    assert_eq!(closed.status.code(), Some(1));
    let tls = run(&["probe", "https://127.0.0.1/readyz"], &[]);
    assert!(stderr(&tls).contains("only http://"), "{}", stderr(&tls));
}
