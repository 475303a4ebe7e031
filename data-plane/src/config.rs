//! Command-line flags; each also reads an environment variable.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::Parser;
use http::Uri;

/// The gateway's data plane: proxies client traffic with the config streamed from the control
/// plane.
#[derive(Debug, Clone, Parser)]
#[command(name = "data-plane", version, about)]
pub struct Config {
    /// Address for client traffic (HTTP/1.1 and h2c).
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:9080")]
    pub listen: SocketAddr,

    /// Address for client traffic over TLS (HTTP/2 and HTTP/1.1 by ALPN), the certificate
    /// chosen by SNI from the config's `certificates`; off unless given.
    #[arg(long, env = "GATEWAY_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,

    /// Control-plane config-stream address(es), comma-separated; on reconnect the data plane
    /// moves on to the next one. `host:port` means `http://host:port`; `https://` needs
    /// --cp-ca.
    #[arg(
        long = "control-plane",
        env = "GATEWAY_CONTROL_PLANE",
        default_value = "http://127.0.0.1:9280",
        value_delimiter = ',',
        value_parser = parse_control_plane,
    )]
    pub control_planes: Vec<Uri>,

    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "GATEWAY_STATUS_LISTEN", default_value = "127.0.0.1:9091")]
    pub status_listen: SocketAddr,

    /// This data plane's id on the config stream [default: the host name].
    #[arg(long, env = "GATEWAY_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,

    /// Labels of this data plane, `key=value` comma-separated (`zone=a,tier=edge`): shown in
    /// the fleet view, and staged rollouts may choose their cohorts by them.
    #[arg(
        long,
        env = "GATEWAY_LABELS",
        value_delimiter = ',',
        value_parser = parse_label
    )]
    pub labels: Vec<(String, String)>,

    /// How often traffic per config version is reported to the control plane, when it
    /// changed (milliseconds; staged rollouts compare a canary's 5xx rate with the rest's).
    #[arg(
        long,
        env = "GATEWAY_REPORT_INTERVAL_MS",
        default_value_t = 2000,
        value_parser = clap::value_parser!(u64).range(10..=600_000)
    )]
    pub report_interval_ms: u64,

    /// Directory where every applied config version is kept, so that a data plane restarted
    /// while no control plane answers serves its last config.
    #[arg(long, env = "GATEWAY_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// The CA that signed the control plane's certificate (PEM), for `https://` control planes.
    #[arg(long, env = "GATEWAY_CP_CA")]
    pub cp_ca: Option<PathBuf>,

    /// This data plane's client certificate for an mTLS config stream (PEM).
    #[arg(long, env = "GATEWAY_CP_CERT", requires = "cp_key")]
    pub cp_cert: Option<PathBuf>,

    /// The private key of --cp-cert (PEM).
    #[arg(long, env = "GATEWAY_CP_KEY", requires = "cp_cert")]
    pub cp_key: Option<PathBuf>,

    /// The data-plane token the control plane requires (its --dp-token).
    #[arg(long, env = "GATEWAY_CP_TOKEN", hide_env_values = true)]
    pub cp_token: Option<String>,

    /// Plugins this data plane refuses to run, comma-separated: a config version that uses
    /// one is rejected (NACKed) and the previous one kept (APISIX's per-node plugin list).
    #[arg(long, env = "GATEWAY_DISABLE_PLUGINS", value_delimiter = ',')]
    pub disable_plugins: Vec<String>,

    /// Request-serving threads [default: the number of cores].
    #[arg(long, env = "GATEWAY_WORKER_THREADS")]
    pub worker_threads: Option<NonZeroUsize>,

    /// On shutdown, how long in-flight requests and open tunnels may take to finish before the
    /// data plane stops anyway (seconds; under Kubernetes' 30 s grace period).
    #[arg(long, env = "GATEWAY_DRAIN_TIMEOUT", default_value_t = 25)]
    pub drain_timeout: u64,

    /// Redis shared by every data plane for cluster-wide rate limits (`redis://host:port`);
    /// without it, `limit-count` counts per data plane.
    #[arg(long, env = "GATEWAY_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Where to write the access log, one JSON line per client request: `off`, `stdout`, or a
    /// file path (appended to; reopened on SIGUSR1 or SIGHUP, as nginx reopens its logs on
    /// USR1, so logrotate can move the file and signal).
    #[arg(
        long,
        env = "GATEWAY_ACCESS_LOG",
        default_value = "off",
        value_parser = parse_access_log
    )]
    pub access_log: AccessLogTarget,

    /// Answer every request with `X-Gateway-Config-Version: <version>`, the config version
    /// that served it.
    #[arg(long, env = "GATEWAY_EXPOSE_CONFIG_VERSION")]
    pub expose_config_version: bool,
}

/// Where the access log goes (`--access-log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// No access log.
    Off,
    /// The process's standard output (after the `key=value` start-up lines).
    Stdout,
    /// A file, appended to and reopened on a signal.
    File(PathBuf),
}

fn parse_access_log(text: &str) -> Result<AccessLogTarget, String> {
    match text.trim() {
        "" => Err("empty access-log target (off, stdout or a file path)".to_owned()),
        "off" => Ok(AccessLogTarget::Off),
        "stdout" | "-" => Ok(AccessLogTarget::Stdout),
        path => Ok(AccessLogTarget::File(PathBuf::from(path))),
    }
}

impl Config {
    /// The node id: the flag, else the host name (`HOSTNAME`, then `/etc/hostname`), else
    /// `data-plane`.
    pub fn node_id(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let from_env = std::env::var("HOSTNAME").ok();
        let from_file = || std::fs::read_to_string("/etc/hostname").ok();
        from_env
            .into_iter()
            .chain(std::iter::from_fn(from_file).take(1))
            .map(|name| name.trim().to_owned())
            .find(|name| !name.is_empty())
            .unwrap_or_else(|| "data-plane".to_owned())
    }

    /// The number of request-serving threads: the flag, else the number of cores.
    pub fn worker_threads(&self) -> usize {
        self.worker_threads
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get)
    }
}

/// Parses one control-plane address: `http://host:port` (a bare `host:port` gets `http://`).
fn parse_control_plane(text: &str) -> Result<Uri, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty control-plane address".to_owned());
    }
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("{text:?}: the scheme must be http or https"));
    }
    if uri.authority().is_none() {
        return Err(format!("{text:?} has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("{text:?}: a control-plane address has no path"));
    }
    Ok(uri)
}

/// One `key=value` label: the key as a resource label's key (letters, digits, `.`, `_`, `-`,
/// `/`), the value non-empty and printable.
fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: a label is key=value"))?;
    let (key, value) = (key.trim(), value.trim());
    let key_ok = !key.is_empty()
        && key.len() <= 63
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if !key_ok {
        return Err(format!(
            "{key:?}: a label key is 1 to 63 letters, digits, '.', '_', '-' or '/'"
        ));
    }
    if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
        return Err(format!(
            "{value:?}: a label value is 1 to 256 printable characters"
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

fn parse_node_id(text: &str) -> Result<String, String> {
    let id = text.trim();
    if id.is_empty() {
        Err("the node id must not be empty".to_owned())
    } else {
        Ok(id.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("data-plane").chain(args.iter().copied()))
    }

    #[test]
    fn labels_are_key_value_pairs() {
        let config = parse(&["--labels", "zone=a, tier=edge"]).unwrap();
        assert_eq!(
            config.labels,
            [
                ("zone".to_owned(), "a".to_owned()),
                ("tier".to_owned(), "edge".to_owned())
            ]
        );
        for bad in ["zone", "=a", "zone=", "zo ne=a"] {
            assert!(parse(&["--labels", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_follow_the_spec() {
        // The GATEWAY_* variables are not set in the test environment.
        let config = parse(&[]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9080".parse().unwrap());
        assert_eq!(config.status_listen, "127.0.0.1:9091".parse().unwrap());
        assert_eq!(
            config.control_planes,
            [Uri::from_static("http://127.0.0.1:9280")]
        );
        assert!(config.cache_dir.is_none());
        assert_eq!(config.access_log, AccessLogTarget::Off);
        assert!(config.labels.is_empty());
        assert_eq!(config.report_interval_ms, 2000);
        assert!(!config.expose_config_version);
        assert!(config.worker_threads() >= 1);
        assert!(!config.node_id().is_empty());
    }

    #[test]
    fn control_planes_are_a_comma_separated_list() {
        let config = parse(&["--control-plane", "http://cp-a:9280, cp-b:9280"]).unwrap();
        let uris: Vec<String> = config.control_planes.iter().map(Uri::to_string).collect();
        assert_eq!(uris, ["http://cp-a:9280/", "http://cp-b:9280/"]);
    }

    #[test]
    fn bad_flags_are_refused() {
        for args in [
            &["--control-plane", "http://cp:9280/path"][..],
            &["--control-plane", "a,,b"],
            &["--control-plane", "ftp://cp"],
            &["--listen", "nope"],
            &["--worker-threads", "0"],
            &["--node-id", " "],
            &["--access-log", ""],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn explicit_values_win() {
        let config = parse(&[
            "--node-id",
            "dp-1",
            "--worker-threads",
            "3",
            "--cache-dir",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!(config.node_id(), "dp-1");
        assert_eq!(config.worker_threads(), 3);
        assert_eq!(config.cache_dir, Some(PathBuf::from("/tmp/x")));
    }

    #[test]
    fn the_access_log_is_off_stdout_or_a_file() {
        let target = |value: &str| parse(&["--access-log", value]).unwrap().access_log;
        assert_eq!(target("off"), AccessLogTarget::Off);
        assert_eq!(target("stdout"), AccessLogTarget::Stdout);
        assert_eq!(
            target("/var/log/gw/access.log"),
            AccessLogTarget::File(PathBuf::from("/var/log/gw/access.log"))
        );
        assert!(
            parse(&["--expose-config-version"])
                .unwrap()
                .expose_config_version
        );
    }
}
