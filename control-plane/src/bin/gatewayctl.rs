//! `gatewayctl`: the operator's command line for the gateway's admin API.
//!
//! Declarative config (`apply`, `diff`, `export`, `validate`), the version history
//! (`versions`, `show`, `rollback`), the fleet (`data-planes`, `status`), staged rollouts
//! (`rollouts`, `promote`, `abort`) and API tokens (`tokens`), as `shared/spec/admin-api.md`
//! describes them.
//!
//! It lives in the control-plane package because the workspace's layout is fixed, but it is a
//! client: it speaks only HTTP to the admin API and uses `gateway_proto` for the resource
//! model and its JSON Schemas (so `validate` checks offline exactly what the server checks).
//! It never uses the control plane's own modules (store, config, API); a unit test below
//! reads its sources and fails on a `control_plane::` path.
//!
//! Exit status: 0 done (and, for `diff`, nothing would change), 2 `diff` found changes, 1 any
//! error — including a usage error, so that a script testing `diff` for 2 never mistakes a
//! typo for a change.

// A binary's root looks for its modules beside it; this one keeps them in a folder of its own.
#[path = "gatewayctl/client.rs"]
mod client;
#[path = "gatewayctl/commands.rs"]
mod commands;
#[path = "gatewayctl/diff.rs"]
mod diff;
#[path = "gatewayctl/files.rs"]
mod files;
#[path = "gatewayctl/normalize.rs"]
mod normalize;
#[path = "gatewayctl/output.rs"]
mod output;
#[path = "gatewayctl/plan.rs"]
mod plan;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use client::{AdminClient, CtlError};
use output::Style;

/// What `apply`, `diff` and `validate` read, for their `--help`.
const FILE_FORMAT: &str = "\
Files hold what `gatewayctl export` writes (and GET /api/v1/config answers): collections
(upstreams, consumers, global-rules, routes), each a list of resources with their `id`:

  upstreams:
    - id: users
      nodes: [{host: 10.0.0.5, port: 8080}]
  routes:
    - {id: users, paths: [/users/*], upstream_id: users}

YAML (several documents per file allowed) or JSON (*.json); all files merge into one config.
Consumer credentials the files leave out are kept as the server has them.";

/// The gateway's command line: declarative config, versions, rollbacks, the fleet and tokens.
#[derive(Debug, Parser)]
#[command(
    name = "gatewayctl",
    version,
    after_help = "Exit status: 0 done (for diff: nothing would change), 2 diff found changes, 1 any error."
)]
struct Cli {
    /// The admin API of a control plane.
    #[arg(
        long,
        env = "GATEWAY_SERVER",
        default_value = "http://127.0.0.1:9180",
        global = true
    )]
    server: String,
    /// The bearer token (prefer the environment variable: arguments show in `ps`).
    #[arg(long, env = "GATEWAY_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// PEM CA certificates that alone are trusted for an https:// server (default: the
    /// webpki (Mozilla) roots).
    #[arg(long, env = "GATEWAY_CACERT", global = true)]
    cacert: Option<PathBuf>,
    /// Never colour the output (colour is used only on a terminal, and never with NO_COLOR).
    #[arg(long, global = true)]
    no_color: bool,
    #[command(subcommand)]
    command: Command,
}

/// Files to read, and which of their resources count.
#[derive(Debug, Args)]
struct Input {
    /// A config file (YAML or JSON) or a directory of them (every *.yaml, *.yml, *.json in it,
    /// by name); repeatable; `-` reads YAML from standard input.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR",
        required = true
    )]
    files: Vec<PathBuf>,
    /// Touch only resources carrying this label (repeatable: all must match); everything else
    /// on the server is left as it is.
    #[arg(long = "select", value_name = "LABEL=VALUE", value_parser = parse_selector)]
    select: Vec<(String, String)>,
    /// Make each consumer's credentials exactly the file's: credentials that exist only on the
    /// server are deleted (by default they are kept).
    #[arg(long)]
    prune_credentials: bool,
}

/// How a read command writes its result.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum ReadFormat {
    /// For people: tables and aligned text.
    Text,
    /// For scripts: the data as JSON.
    Json,
}

/// How `export` writes the config.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum ExportFormat {
    /// YAML (the default).
    Yaml,
    /// JSON.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make the server's config match the files, as one version (shows the diff first).
    #[command(after_help = FILE_FORMAT)]
    Apply {
        #[command(flatten)]
        input: Input,
        /// Why: recorded with the version (X-Change-Message).
        #[arg(short, long)]
        message: Option<String>,
        /// Show the diff and have the server check the write, without writing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show what `apply` would change: exit 0 when nothing, 2 when something.
    #[command(after_help = FILE_FORMAT)]
    Diff {
        #[command(flatten)]
        input: Input,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Text)]
        output: ReadFormat,
    },
    /// Write the server's config in the file format `apply` reads (stable order).
    Export {
        #[arg(short, long, value_enum, default_value_t = ExportFormat::Yaml)]
        output: ExportFormat,
    },
    /// Check files offline with the server's own schemas and rules (no server needed).
    #[command(after_help = FILE_FORMAT)]
    Validate {
        /// A config file or a directory of them; repeatable; `-` is standard input.
        #[arg(
            short = 'f',
            long = "filename",
            value_name = "FILE|DIR",
            required = true
        )]
        files: Vec<PathBuf>,
    },
    /// List config versions, newest first.
    Versions {
        /// How many.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Text)]
        output: ReadFormat,
    },
    /// Show one version: who, when, why, and what it changed.
    Show {
        /// The config version.
        version: u64,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Text)]
        output: ReadFormat,
    },
    /// Make the config equal to an earlier version's, as a new version.
    Rollback {
        /// The config version to return to.
        version: u64,
        /// Why: recorded with the new version (default: "rollback to version N").
        #[arg(short, long)]
        message: Option<String>,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Text)]
        output: ReadFormat,
    },
    /// List the data planes every control-plane replica has seen.
    DataPlanes {
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Text)]
        output: ReadFormat,
    },
    /// The current version and how many data planes serve it.
    Status {
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Text)]
        output: ReadFormat,
    },
    /// List staged rollouts (newest first), or show one.
    Rollouts {
        /// A rollout to show.
        id: Option<String>,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Text)]
        output: ReadFormat,
    },
    /// Skip the rest of a rollout's bake and move it on.
    Promote {
        /// The rollout.
        id: String,
    },
    /// Stop a rollout and return every data plane to the previous version.
    Abort {
        /// The rollout.
        id: String,
    },
    /// Manage admin API tokens.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// List tokens: names, roles, when created and last used.
    List {
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Text)]
        output: ReadFormat,
    },
    /// Create a token; it is printed once, on standard output, and never shown again.
    Create {
        /// Its name (recorded as the author of the versions it writes).
        name: String,
        /// `admin` (everything), `editor` (config writes and rollbacks) or `viewer` (reads).
        #[arg(long)]
        role: String,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Text)]
        output: ReadFormat,
    },
    /// Revoke a token at once, on every control-plane replica.
    Revoke {
        /// Its name.
        name: String,
    },
}

fn parse_selector(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not LABEL=VALUE")),
    }
}

/// How a command ended without an error.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Done.
    Done,
    /// `diff` found changes.
    Changes,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // --help and --version are not errors.
            return if error.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Changes) => ExitCode::from(2),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<Outcome, CtlError> {
    let style = Style::for_stdout(cli.no_color);
    // `validate` needs no server: a bad --server must not fail it.
    let client = || AdminClient::new(&cli.server, cli.token.clone(), cli.cacert.as_deref());
    let json = |format: ReadFormat| format == ReadFormat::Json;
    match cli.command {
        Command::Apply {
            input,
            message,
            dry_run,
        } => {
            let request = commands::ApplyRequest {
                files: &input.files,
                options: options(&input),
                message: message.as_deref(),
                dry_run,
            };
            commands::apply(&client()?, style, request).await
        }
        Command::Diff { input, output } => {
            commands::diff(
                &client()?,
                style,
                &input.files,
                options(&input),
                json(output),
            )
            .await
        }
        Command::Export { output } => {
            commands::export(&client()?, output == ExportFormat::Json).await
        }
        Command::Validate { files } => commands::validate(&files),
        Command::Versions { limit, output } => {
            commands::versions(&client()?, limit, json(output)).await
        }
        Command::Show { version, output } => {
            commands::show(&client()?, style, version, json(output)).await
        }
        Command::Rollback {
            version,
            message,
            output,
        } => commands::rollback(&client()?, style, version, message.as_deref(), json(output)).await,
        Command::DataPlanes { output } => commands::data_planes(&client()?, json(output)).await,
        Command::Status { output } => commands::status(&client()?, json(output)).await,
        Command::Rollouts { id, output } => {
            commands::rollouts(&client()?, id.as_deref(), json(output)).await
        }
        Command::Promote { id } => commands::rollout_action(&client()?, &id, "promote").await,
        Command::Abort { id } => commands::rollout_action(&client()?, &id, "abort").await,
        Command::Tokens { command } => match command {
            TokensCommand::List { output } => commands::tokens_list(&client()?, json(output)).await,
            TokensCommand::Create { name, role, output } => {
                commands::tokens_create(&client()?, &name, &role, json(output)).await
            }
            TokensCommand::Revoke { name } => commands::tokens_revoke(&client()?, &name).await,
        },
    }
}

fn options(input: &Input) -> plan::Options {
    plan::Options {
        select: input.select.clone(),
        prune_credentials: input.prune_credentials,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        assert!(parse_selector("team=a").is_ok());
        assert_eq!(parse_selector("k=").unwrap(), ("k".into(), String::new()));
        assert!(parse_selector("=a").is_err() && parse_selector("team").is_err());
    }

    /// The CLI is a client of the admin API: none of the control plane's modules (store,
    /// config, API) may be reached from its sources.
    #[test]
    fn the_cli_uses_no_control_plane_module() {
        let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin");
        let mut sources = vec![bin.join("gatewayctl.rs")];
        let modules = std::fs::read_dir(bin.join("gatewayctl")).expect("the CLI's module folder");
        sources.extend(modules.filter_map(Result::ok).map(|entry| entry.path()));
        // The crate's name as a whole word (spelled in two halves so that this test does not
        // find itself): no `use`, path or `extern crate` of it, however aliased.
        let forbidden = ["control", "_plane"].concat();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        let names_the_crate = |code: &str| {
            code.match_indices(&forbidden).any(|(at, _)| {
                !word(code[..at].chars().next_back())
                    && !word(code[at + forbidden.len()..].chars().next())
            })
        };
        for source in sources {
            let text = std::fs::read_to_string(&source).expect("a CLI source");
            for (number, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                assert!(
                    !names_the_crate(code),
                    "{}:{}: the CLI must speak HTTP to the control plane, not use its modules: {line}",
                    source.display(),
                    number + 1
                );
            }
        }
    }
}
