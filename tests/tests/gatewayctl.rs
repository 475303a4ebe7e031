//! `gatewayctl` end to end: the real binary against a real control plane, with config files
//! in a temporary folder — declarative apply and diff, export that applies back unchanged,
//! `--select`, write-only credentials, offline validation, the version history, and how
//! server errors read.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway_e2e::{ControlPlane, DataPlane, FakeUpstream, binary, sqlite_url, unique};
use serde_json::{Value, json};

/// How long one `gatewayctl` run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// What one `gatewayctl` run did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Panics with the whole run unless it exited with `code`.
    fn expect(self, code: i32) -> Run {
        assert_eq!(self.code, Some(code), "{self:#?}");
        self
    }
}

/// Runs `gatewayctl` with `args` against `server` (with the tests' admin token).
fn gatewayctl(server: &str, args: &[&str]) -> Run {
    gatewayctl_with(server, gateway_e2e::TOKEN, args)
}

fn gatewayctl_with(server: &str, token: &str, args: &[&str]) -> Run {
    let mut child = Command::new(binary("gatewayctl"))
        .args(args)
        .env("GATEWAY_SERVER", server)
        .env("GATEWAY_TOKEN", token)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gatewayctl");
    // Drained on threads so that a long diff never blocks the child on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + RUN_LIMIT;
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gatewayctl {args:?} did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// A fresh folder for one test's files.
fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(&format!("gatewayctl-{name}")));
    std::fs::create_dir_all(&dir).expect("temp folder");
    dir
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).expect("write a config file");
    path.display().to_string()
}

/// The versions the server has written, newest first.
async fn versions(cp: &ControlPlane) -> Vec<Value> {
    let (status, _, body) = cp.call("GET", "/api/v1/versions", None).await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

async fn head(cp: &ControlPlane) -> u64 {
    let (_, version, _) = cp.call("GET", "/api/v1/config", None).await;
    version.expect("the export carries X-Config-Version")
}

const UPSTREAMS_YAML: &str = "\
# The backends.
upstreams:
  - id: users
    nodes:
      - {host: 127.0.0.1, port: PORT}
    retries: {count: 1, on: [connect_error, timeout]}
";

const ROUTES_JSON: &str = r#"{
  "routes": [
    {"id": "users", "paths": ["/users/*"], "upstream_id": "users", "plugins": {"key-auth": {}}}
  ]
}"#;

const CONSUMERS_YAML: &str = "\
consumers:
  - id: alice
    credentials:
      key-auth: {key: alice-key-0001}
      basic-auth: {username: alice, password: alice-password}
      jwt-auth: {key: alice-jwt, secret: alice-jwt-secret-value}
";

#[tokio::test]
async fn a_folder_of_yaml_and_json_applies_as_one_version_then_diffs_clean() {
    let users = FakeUpstream::start("users").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, &unique("dp"));
    let dir = folder("apply");
    write(
        &dir.join("10-upstreams.yaml"),
        &UPSTREAMS_YAML.replace("PORT", &users.addr.port().to_string()),
    );
    write(&dir.join("20-routes.json"), ROUTES_JSON);
    write(&dir.join("30-consumers.yml"), CONSUMERS_YAML);
    write(&dir.join("README.txt"), "not config");
    let dir_arg = dir.display().to_string();

    let diff = gatewayctl(&cp.admin_url, &["diff", "-f", &dir_arg]).expect(2);
    for line in ["+ upstreams/users", "+ routes/users", "+ consumers/alice"] {
        assert!(diff.stdout.contains(line), "{diff:#?}");
    }
    let applied = gatewayctl(
        &cp.admin_url,
        &["apply", "-f", &dir_arg, "--message", "first rollout"],
    )
    .expect(0);
    assert!(
        applied.stdout.contains("applied as version 1"),
        "{applied:#?}"
    );
    let history = versions(&cp).await;
    assert_eq!(
        history.len(),
        1,
        "one version for the whole folder: {history:?}"
    );
    assert_eq!(history[0]["message"], "first rollout");
    assert_eq!(history[0]["changes"].as_array().map(Vec::len), Some(3));

    // The plaintext key, password and JWT secret in the files match what the server sealed:
    // nothing to change, and applying again writes nothing.
    let clean = gatewayctl(&cp.admin_url, &["diff", "-f", &dir_arg]).expect(0);
    assert!(clean.stdout.contains("no changes"), "{clean:#?}");
    let again = gatewayctl(&cp.admin_url, &["apply", "-f", &dir_arg]).expect(0);
    assert!(again.stdout.contains("nothing to apply"), "{again:#?}");
    assert_eq!(head(&cp).await, 1);

    // And the data plane serves what was applied.
    dp.applied(1).await;
    let (status, _, body) = dp
        .send("GET", "/users/7", &[("apikey", "alice-key-0001")])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["upstream"], "users");
}

#[tokio::test]
async fn what_export_writes_applies_back_with_no_diff_and_no_version() {
    let cp = ControlPlane::start(&sqlite_url(), None);
    // Written through the API in two styles: every default spelled out, and none at all.
    cp.write(
        "PUT",
        "/api/v1/upstreams/explicit",
        Some(json!({"nodes": [{"host": "10.0.0.1", "port": 80, "weight": 1}], "scheme": "http",
                    "lb": "round_robin", "pass_host": "pass", "timeouts": {"connect_ms": 5000, "read_ms": 60000},
                    "retries": {"count": 2, "on": ["connect_error", "timeout"], "non_idempotent": false}})),
    )
    .await;
    cp.write(
        "PUT",
        "/api/v1/upstreams/bare",
        Some(json!({"nodes": [{"host": "10.0.0.2", "port": 80}], "labels": {"tier": "web"}})),
    )
    .await;
    cp.write(
        "PUT",
        "/api/v1/routes/web",
        Some(json!({"paths": ["/web/*", "/exact"], "hosts": ["*.example.com"], "upstream_id": "bare",
                    "priority": 3, "plugins": {"limit-count": {"count": 10, "time_window": 60, "key": "remote_addr", "rejected_code": 429}}})),
    )
    .await;
    cp.write(
        "PUT",
        "/api/v1/routes/inline",
        Some(json!({"paths": ["/inline"], "upstream": {"nodes": [{"host": "10.0.0.3", "port": 8080}]}})),
    )
    .await;
    // proxy-cache's purge_key is a secret: exported redacted, kept when applied back.
    cp.write(
        "PUT",
        "/api/v1/routes/cached",
        Some(json!({"paths": ["/cached/*"], "upstream_id": "bare",
                    "plugins": {"proxy-cache": {"purge_key": "cached-purge-key"}}})),
    )
    .await;
    cp.write(
        "PUT",
        "/api/v1/consumers/carol",
        Some(
            json!({"credentials": {"key-auth": {"key": "carol-key-0001"},
                    "basic-auth": {"username": "carol", "password": "carol-password"},
                    "jwt-auth": {"key": "carol-jwt", "secret": "carol-jwt-secret-value"}}}),
        ),
    )
    .await;
    cp.write(
        "PUT",
        "/api/v1/global-rules/everywhere",
        Some(json!({"plugins": {"request-id": {}}})),
    )
    .await;
    // A certificate: its key is exported redacted, and the placeholder applied back keeps it.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ctl.example".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    cp.write(
        "PUT",
        "/api/v1/certificates/edge",
        Some(json!({"snis": ["ctl.example"], "cert": cert.pem(), "key": key.serialize_pem()})),
    )
    .await;
    let before = head(&cp).await;
    let dir = folder("export");

    let yaml = gatewayctl(&cp.admin_url, &["export"]).expect(0);
    assert!(
        !yaml.stdout.contains("created_at") && !yaml.stdout.contains("revision"),
        "{}",
        yaml.stdout
    );
    // Collections in a fixed order, ids sorted.
    let at = |needle: &str| {
        yaml.stdout
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} in {}", yaml.stdout))
    };
    assert!(
        at("upstreams:") < at("consumers:")
            && at("consumers:") < at("global-rules:")
            && at("global-rules:") < at("routes:")
    );
    assert!(at("id: bare") < at("id: explicit") && at("id: inline") < at("id: web"));
    assert!(at("routes:") < at("certificates:"));
    assert!(
        yaml.stdout.contains("<redacted>")
            && !yaml.stdout.contains("PRIVATE KEY")
            && !yaml.stdout.contains("cached-purge-key"),
        "{}",
        yaml.stdout
    );
    // Exporting twice gives the same bytes.
    assert_eq!(
        gatewayctl(&cp.admin_url, &["export"]).expect(0).stdout,
        yaml.stdout
    );
    let yaml_file = write(&dir.join("config.yaml"), &yaml.stdout);
    gatewayctl(&cp.admin_url, &["diff", "-f", &yaml_file]).expect(0);
    let applied = gatewayctl(&cp.admin_url, &["apply", "-f", &yaml_file]).expect(0);
    assert!(applied.stdout.contains("nothing to apply"), "{applied:#?}");

    let json_export = gatewayctl(&cp.admin_url, &["export", "-o", "json"]).expect(0);
    let mut document: Value = serde_json::from_str(&json_export.stdout).expect("JSON export");
    let json_file = write(&dir.join("config.json"), &json_export.stdout);
    gatewayctl(&cp.admin_url, &["diff", "-f", &json_file]).expect(0);

    // Defaults written the other way round mean the same thing: still no diff.
    document["upstreams"][0]["nodes"][0]["weight"] = json!(1);
    document["upstreams"][0]["lb"] = json!("round_robin");
    document["upstreams"][1] = json!({"id": "explicit", "nodes": [{"host": "10.0.0.1", "port": 80}], "retries": {"count": 2}});
    document["routes"][0]["enabled"] = json!(true);
    // A certificate's not_after is the server's to work out: a file may leave it out.
    document["certificates"][0]
        .as_object_mut()
        .unwrap()
        .remove("not_after");
    // The purge_key in plain text, as stored: only the server can compare it, and it sees
    // no change.
    assert_eq!(document["routes"][0]["id"], "cached");
    document["routes"][0]["plugins"]["proxy-cache"]["purge_key"] = json!("cached-purge-key");
    let swapped = write(&dir.join("swapped.json"), &document.to_string());
    let clean = gatewayctl(&cp.admin_url, &["diff", "-f", &swapped]).expect(0);
    assert!(clean.stdout.contains("no changes"), "{clean:#?}");
    gatewayctl(&cp.admin_url, &["apply", "-f", &swapped]).expect(0);
    assert_eq!(head(&cp).await, before, "no version was written");
    let (_, _, route) = cp.call("GET", "/api/v1/routes/cached", None).await;
    assert_eq!(route["plugins"]["proxy-cache"]["purge_key"], "<redacted>");
    // Another key in plain text is a change the server confirms, and the key never shows.
    document["routes"][0]["plugins"]["proxy-cache"]["purge_key"] = json!("another-purge-key");
    let changed = write(&dir.join("changed.json"), &document.to_string());
    let diff = gatewayctl(&cp.admin_url, &["diff", "-f", &changed]).expect(2);
    assert!(
        diff.stdout.contains("routes/cached") && !diff.stdout.contains("another-purge-key"),
        "{diff:#?}"
    );
}

#[tokio::test]
async fn a_changed_file_diffs_with_pointers_and_exit_status_2() {
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dir = folder("change");
    let file = dir.join("config.yaml");
    let original = "\
upstreams:
  - {id: api, nodes: [{host: 10.0.0.1, port: 80}]}
  - {id: old, nodes: [{host: 10.0.0.9, port: 80}]}
routes:
  - {id: api, paths: [/api/*], upstream_id: api}
";
    let path = write(&file, original);
    gatewayctl(&cp.admin_url, &["apply", "-f", &path]).expect(0);

    write(
        &file,
        "\
upstreams:
  - {id: api, nodes: [{host: 10.0.0.1, port: 8080}]}
  - {id: new, nodes: [{host: 10.0.0.5, port: 80}]}
routes:
  - {id: api, paths: [/v2/*], upstream_id: api, priority: 5}
",
    );
    let diff = gatewayctl(&cp.admin_url, &["diff", "-f", &path]).expect(2);
    for expected in [
        "~ upstreams/api",
        "~ /nodes/0/port: 80 → 8080",
        "+ upstreams/new",
        "- upstreams/old",
        "~ routes/api",
        "~ /paths/0: \"/api/*\" → \"/v2/*\"",
        // A field left out reads as its default.
        "~ /priority: 0 → 5",
        "1 to create, 2 to update, 1 to delete",
    ] {
        assert!(diff.stdout.contains(expected), "{expected:?} in {diff:#?}");
    }
    assert!(
        !diff.stdout.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );

    let json_diff = gatewayctl(&cp.admin_url, &["diff", "-f", &path, "-o", "json"]).expect(2);
    let changes: Value = serde_json::from_str(&json_diff.stdout).expect("JSON diff");
    let route = changes
        .as_array()
        .and_then(|c| c.iter().find(|c| c["kind"] == "routes"))
        .expect("the route's change");
    assert_eq!(route["op"], "update");
    let pointers: Vec<&str> = route["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["pointer"].as_str())
        .collect();
    assert_eq!(pointers, ["/paths/0", "/priority"]);

    // A dry run shows the same and writes nothing.
    let version = head(&cp).await;
    let dry = gatewayctl(&cp.admin_url, &["apply", "-f", &path, "--dry-run"]).expect(0);
    assert!(dry.stdout.contains("nothing was written"), "{dry:#?}");
    assert_eq!(head(&cp).await, version);
}

#[tokio::test]
async fn select_applies_a_labelled_subset_and_leaves_the_rest() {
    let cp = ControlPlane::start(&sqlite_url(), None);
    cp.write(
        "PUT",
        "/api/v1/upstreams/shared",
        Some(json!({"nodes": [{"host": "10.0.0.1", "port": 80}]})),
    )
    .await;
    cp.write(
        "PUT",
        "/api/v1/routes/legacy",
        Some(json!({"paths": ["/legacy"], "upstream_id": "shared"})),
    )
    .await;
    let dir = folder("select");
    let file = dir.join("team-a.yaml");
    let path = write(
        &file,
        "\
upstreams:
  - {id: a-api, nodes: [{host: 10.0.1.1, port: 80}], labels: {team: a}}
routes:
  - {id: a-one, paths: [/a/one], upstream_id: a-api, labels: {team: a}}
  - {id: a-two, paths: [/a/two], upstream_id: shared, labels: {team: a}}
  - {id: not-selected, paths: [/other], upstream_id: shared}
",
    );
    let applied = gatewayctl(
        &cp.admin_url,
        &["apply", "-f", &path, "--select", "team=a", "-m", "team a"],
    )
    .expect(0);
    assert!(
        applied.stderr.contains("lack the selected labels"),
        "{applied:#?}"
    );
    let ids = |body: &Value, kind: &str| -> Vec<String> {
        body[kind]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect()
    };
    let (_, _, config) = cp.call("GET", "/api/v1/config", None).await;
    assert_eq!(ids(&config, "upstreams"), ["a-api", "shared"]);
    assert_eq!(ids(&config, "routes"), ["a-one", "a-two", "legacy"]);

    // The team drops a route: only that one goes; a diff of the team's files alone is clean
    // even though the server holds other resources.
    write(
        &file,
        "\
upstreams:
  - {id: a-api, nodes: [{host: 10.0.1.1, port: 80}], labels: {team: a}}
routes:
  - {id: a-one, paths: [/a/one], upstream_id: a-api, labels: {team: a}}
",
    );
    let diff = gatewayctl(&cp.admin_url, &["diff", "-f", &path, "--select", "team=a"]).expect(2);
    assert!(
        diff.stdout.contains("- routes/a-two")
            && diff
                .stdout
                .contains("0 to create, 0 to update, 1 to delete"),
        "{diff:#?}"
    );
    gatewayctl(&cp.admin_url, &["apply", "-f", &path, "--select", "team=a"]).expect(0);
    gatewayctl(&cp.admin_url, &["diff", "-f", &path, "--select", "team=a"]).expect(0);
    let (_, _, config) = cp.call("GET", "/api/v1/config", None).await;
    assert_eq!(ids(&config, "routes"), ["a-one", "legacy"]);
    assert_eq!(ids(&config, "upstreams"), ["a-api", "shared"]);
    // Without the selection the same file would delete everything else.
    let everything = gatewayctl(&cp.admin_url, &["diff", "-f", &path]).expect(2);
    assert!(
        everything.stdout.contains("- routes/legacy"),
        "{everything:#?}"
    );
}

#[tokio::test]
async fn credentials_that_exist_only_on_the_server_are_not_stripped() {
    let cp = ControlPlane::start(&sqlite_url(), None);
    cp.write(
        "PUT",
        "/api/v1/consumers/dave",
        Some(
            json!({"username": "dave", "credentials": {"key-auth": {"key": "dave-key-0001"},
                    "jwt-auth": {"key": "dave-jwt", "secret": "dave-jwt-secret-value"}}}),
        ),
    )
    .await;
    let (_, _, stored) = cp.call("GET", "/api/v1/consumers/dave", None).await;
    let dir = folder("credentials");
    // The consumer as kept in git: no secrets at all.
    let path = write(
        &dir.join("consumers.yaml"),
        "consumers:\n  - {id: dave, username: dave-ops}\n",
    );
    let applied = gatewayctl(&cp.admin_url, &["apply", "-f", &path]).expect(0);
    assert!(applied.stdout.contains("~ /username"), "{applied:#?}");
    assert!(!applied.stdout.contains("/credentials"), "{applied:#?}");
    assert!(applied.stderr.contains("kept the server's"), "{applied:#?}");
    let (_, _, after) = cp.call("GET", "/api/v1/consumers/dave", None).await;
    assert_eq!(after["username"], "dave-ops");
    assert_eq!(
        after["credentials"], stored["credentials"],
        "credentials untouched"
    );
    gatewayctl(&cp.admin_url, &["diff", "-f", &path]).expect(0);

    // Only when told to.
    let pruned = gatewayctl(
        &cp.admin_url,
        &["apply", "-f", &path, "--prune-credentials"],
    )
    .expect(0);
    assert!(pruned.stdout.contains("- /credentials"), "{pruned:#?}");
    let (_, _, after) = cp.call("GET", "/api/v1/consumers/dave", None).await;
    assert!(after.get("credentials").is_none(), "{after}");
}

#[test]
fn validate_works_offline_and_names_file_resource_and_pointer() {
    // No control plane anywhere: the server flag points at a closed port.
    let offline = "http://127.0.0.1:1";
    let dir = folder("validate");
    let good = write(
        &dir.join("good.yaml"),
        "upstreams:\n  - {id: u, nodes: [{host: h, port: 1}]}\nroutes:\n  - {id: r, paths: [/r], upstream_id: u}\n",
    );
    let ok = gatewayctl(offline, &["validate", "-f", &good]).expect(0);
    assert!(
        ok.stdout.contains("2 resource(s) in 1 file(s) are valid"),
        "{ok:#?}"
    );

    let bad = write(
        &dir.join("bad.yaml"),
        "routes:\n  - id: broken\n    paths: [no-slash]\n    upstream_id: u\n",
    );
    let refused = gatewayctl(offline, &["validate", "-f", &good, "-f", &bad]).expect(1);
    assert!(
        refused
            .stderr
            .contains(&format!("{bad}: routes/broken: /paths/0:")),
        "{refused:#?}"
    );
    let dangling = write(
        &dir.join("dangling.json"),
        r#"{"routes": [{"id": "lost", "paths": ["/lost"], "upstream_id": "nowhere"}]}"#,
    );
    let refused = gatewayctl(offline, &["validate", "-f", &dangling]).expect(1);
    assert!(
        refused.stderr.contains(&format!(
            "{dangling}: routes/lost: /upstream_id: upstreams/nowhere does not exist"
        )),
        "{refused:#?}"
    );
    let duplicate = write(
        &dir.join("again.yaml"),
        "upstreams:\n  - {id: u, nodes: [{host: h, port: 2}]}\n",
    );
    let refused = gatewayctl(offline, &["validate", "-f", &good, "-f", &duplicate]).expect(1);
    assert!(
        refused.stderr.contains(&format!(
            "upstreams/u is defined in {good} and again in {duplicate}"
        )),
        "{refused:#?}"
    );
}

#[tokio::test]
async fn versions_show_and_rollback_round_trip() {
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dir = folder("history");
    let file = dir.join("config.yaml");
    let first = "\
upstreams:
  - {id: api, nodes: [{host: 10.0.0.1, port: 80}]}
routes:
  - {id: api, paths: [/api/*], upstream_id: api}
";
    let path = write(&file, first);
    gatewayctl(&cp.admin_url, &["apply", "-f", &path, "-m", "first"]).expect(0);
    write(&file, &first.replace("/api/*", "/v2/*"));
    gatewayctl(&cp.admin_url, &["apply", "-f", &path, "-m", "second"]).expect(0);

    let table = gatewayctl(&cp.admin_url, &["versions"]).expect(0);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("VERSION"), "{table:#?}");
    assert!(
        lines[1].starts_with('2') && lines[1].ends_with("second"),
        "{table:#?}"
    );
    assert!(
        lines[2].starts_with('1') && lines[2].ends_with("first"),
        "{table:#?}"
    );
    let listed = gatewayctl(&cp.admin_url, &["versions", "--limit", "1", "-o", "json"]).expect(0);
    let listed: Value = serde_json::from_str(&listed.stdout).expect("JSON versions");
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["version"], 2);

    let shown = gatewayctl(&cp.admin_url, &["show", "2"]).expect(0);
    for expected in [
        "version 2",
        "message:    second",
        "~ routes/api",
        "~ /paths/0: \"/api/*\" → \"/v2/*\"",
    ] {
        assert!(
            shown.stdout.contains(expected),
            "{expected:?} in {shown:#?}"
        );
    }

    let rolled = gatewayctl(&cp.admin_url, &["rollback", "1", "-m", "undo the move"]).expect(0);
    assert!(
        rolled
            .stdout
            .contains("rolled back to version 1 as version 3"),
        "{rolled:#?}"
    );
    assert_eq!(versions(&cp).await[0]["message"], "undo the move");
    write(&file, first);
    gatewayctl(&cp.admin_url, &["diff", "-f", &path]).expect(0);
}

#[tokio::test]
async fn server_errors_print_their_code_details_and_exit_1() {
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dir = folder("errors");
    // A redacted JWT secret keeps a stored one; this consumer has none, which only the
    // server can know.
    let path = write(
        &dir.join("consumers.yaml"),
        "consumers:\n  - id: erin\n    credentials:\n      jwt-auth: {key: erin-jwt, secret: <redacted>}\n",
    );
    let refused = gatewayctl(&cp.admin_url, &["apply", "-f", &path]).expect(1);
    for expected in [
        "PUT /api/v1/config answered 409 reference_conflict",
        &format!("consumers/erin ({path}): /credentials/jwt-auth/secret:"),
        "only keeps an existing secret",
    ] {
        assert!(
            refused.stderr.contains(expected),
            "{expected:?} in {refused:#?}"
        );
    }
    assert_eq!(head(&cp).await, 0, "a refused apply writes nothing");

    let missing = gatewayctl(&cp.admin_url, &["rollback", "99"]).expect(1);
    assert!(
        missing
            .stderr
            .contains("answered 404 not_found: version 99 does not exist"),
        "{missing:#?}"
    );
    let unauthorised = gatewayctl_with(&cp.admin_url, "wrong-token", &["versions"]).expect(1);
    assert!(
        unauthorised.stderr.contains("401 unauthorized"),
        "{unauthorised:#?}"
    );

    // A reference that does not resolve is caught before the request, named by file.
    let dangling = write(
        &dir.join("routes.yaml"),
        "routes:\n  - {id: lost, paths: [/lost], upstream_id: nowhere}\n",
    );
    let refused = gatewayctl(&cp.admin_url, &["apply", "-f", &dangling]).expect(1);
    assert!(
        refused.stderr.contains(&format!(
            "{dangling}: routes/lost: /upstream_id: upstreams/nowhere does not exist"
        )),
        "{refused:#?}"
    );
    // Unreachable server, and a usage error: 1 as well (2 means "changes" for diff).
    gatewayctl("http://127.0.0.1:1", &["status"]).expect(1);
    gatewayctl(&cp.admin_url, &["diff"]).expect(1);
    assert_eq!(head(&cp).await, 0, "nothing written by any of it");
}
