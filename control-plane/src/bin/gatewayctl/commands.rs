//! One function per subcommand: ask the admin API, write the answer.

use std::path::PathBuf;

use gateway_proto::Kind;
use http::Method;
use serde_json::{Value, json};

use crate::Outcome;
use crate::client::{AdminClient, CtlError, Reply};
use crate::diff::{self, Op, ResourceChange};
use crate::files;
use crate::normalize::{canonical, default_at};
use crate::output::{self, Ordered, Style, cell, table, time};
use crate::plan::{self, Options, Plan, ServerConfig};

const CONFIG: &str = "/api/v1/config";
const ROLLOUTS: &str = "/api/v1/rollouts";
const TOKENS: &str = "/api/v1/tokens";

/// What `apply` was asked to do.
pub struct ApplyRequest<'a> {
    /// `-f` arguments.
    pub files: &'a [PathBuf],
    /// `--select`, `--prune-credentials`.
    pub options: Options,
    /// `--message`.
    pub message: Option<&'a str>,
    /// `--dry-run`.
    pub dry_run: bool,
}

/// Reads the files and the server's config and works out the write: files validated first
/// (so problems name files, not request pointers), references checked over the result, and
/// JWT secrets the client cannot compare settled by the server's dry run.
async fn plan_for(
    client: &AdminClient,
    paths: &[PathBuf],
    options: &Options,
) -> Result<Plan, CtlError> {
    let desired = files::load(paths)?;
    let (_, problems) = plan::validate_documents(&desired);
    if !problems.is_empty() {
        return Err(CtlError::Invalid(problems));
    }
    let reply = client.get(CONFIG).await?;
    let server = ServerConfig::from_export(&reply.body)?;
    let mut plan = plan::build(&server, &desired, options)?;
    let problems = plan.check_result();
    if !problems.is_empty() {
        return Err(CtlError::Invalid(problems));
    }
    if !plan.uncertain.is_empty() {
        match dry_run(client, &plan).await {
            Ok(reply) => plan.settle_secrets(&reply.body["changes"]),
            // A read-only token may still diff: the secret then counts as a change.
            Err(CtlError::Api(failure)) if matches!(failure.status, 401 | 403) => {
                plan.leave_secrets_unsettled(&failure.code)
            }
            Err(error) => return Err(error),
        }
    }
    for note in &plan.notes {
        eprintln!("note: {note}");
    }
    Ok(plan)
}

/// `PUT /api/v1/config?dry_run=true`: the server's own check of the write, nothing written.
async fn dry_run(client: &AdminClient, plan: &Plan) -> Result<Reply, CtlError> {
    client
        .call(
            Method::PUT,
            &format!("{CONFIG}?dry_run=true"),
            Some(&plan.body),
            None,
        )
        .await
        .map_err(|error| located(plan, error))
}

/// A server error about the plan's body, with its pointers traced back to the files.
fn located(plan: &Plan, error: CtlError) -> CtlError {
    match error {
        CtlError::Api(mut failure) => {
            plan.locate(&mut failure);
            CtlError::Api(failure)
        }
        other => other,
    }
}

/// `apply`: show the diff, then write it as one version (or only check it, `--dry-run`).
pub async fn apply(
    client: &AdminClient,
    style: Style,
    request: ApplyRequest<'_>,
) -> Result<Outcome, CtlError> {
    let plan = plan_for(client, request.files, &request.options).await?;
    print!("{}", diff::render(&plan.changes, &style));
    if plan.changes.is_empty() {
        println!(
            "nothing to apply: the server's config (version {}) already matches",
            plan.base_version
        );
        return Ok(Outcome::Done);
    }
    if request.dry_run {
        dry_run(client, &plan).await?;
        println!("dry run: the server accepts this change; nothing was written");
        return Ok(Outcome::Done);
    }
    // Based on the version the plan was made from: a write through anyone else in between
    // makes this a 412 and writes nothing, rather than being silently overwritten.
    let reply = client
        .call_if_match(
            Method::PUT,
            CONFIG,
            Some(&plan.body),
            request.message,
            Some(plan.base_version),
        )
        .await
        .map_err(|error| match error {
            CtlError::Api(mut failure) if failure.status == 412 => {
                failure.message.push_str(
                    " (the config changed while this apply ran: run it again to see the new diff)",
                );
                CtlError::Api(failure)
            }
            error => located(&plan, error),
        })?;
    let version = reply.body["version"]
        .as_u64()
        .or(reply.version)
        .unwrap_or_default();
    if reply.body["written"] == false {
        println!("nothing written: the server found no change");
        return Ok(Outcome::Done);
    }
    println!("applied as version {version}");
    Ok(Outcome::Done)
}

/// `diff`: what `apply` would change; exit status 2 when anything.
pub async fn diff(
    client: &AdminClient,
    style: Style,
    paths: &[PathBuf],
    options: Options,
    as_json: bool,
) -> Result<Outcome, CtlError> {
    let plan = plan_for(client, paths, &options).await?;
    if as_json {
        print!("{}", output::json(&diff::to_json(&plan.changes))?);
    } else {
        print!("{}", diff::render(&plan.changes, &style));
    }
    Ok(if plan.changes.is_empty() {
        Outcome::Done
    } else {
        Outcome::Changes
    })
}

/// `export`: the server's config in the file format, in a stable order: collections in
/// dependency order, resources by id, every map's keys sorted; server-managed fields left out.
pub async fn export(client: &AdminClient, as_json: bool) -> Result<Outcome, CtlError> {
    let reply = client.get(CONFIG).await?;
    let server = ServerConfig::from_export(&reply.body)?;
    let mut sections = Vec::new();
    for kind in Kind::ALL {
        let items: Vec<Value> = server
            .resources
            .iter()
            .filter(|(key, _)| key.kind == kind)
            .map(|(key, body)| {
                let mut item = body.clone();
                if let Value::Object(fields) = &mut item {
                    fields.insert("id".into(), Value::String(key.id.clone()));
                }
                output::sorted(&item)
            })
            .collect();
        sections.push((kind.as_str().to_owned(), Value::Array(items)));
    }
    for (name, _) in &server.unknown {
        // Written out, it would not apply back (this build cannot validate it); `apply`
        // carries it through untouched instead.
        eprintln!("warning: this gatewayctl does not know the collection {name:?}; not exported");
    }
    let document = Ordered(sections);
    if as_json {
        print!("{}", output::json(&document)?);
    } else {
        println!(
            "# gatewayctl export of config version {} from {}",
            server.version,
            client.server()
        );
        print!("{}", output::yaml(&document)?);
    }
    Ok(Outcome::Done)
}

/// `validate`: the files checked offline with the server's schemas and rules.
pub fn validate(paths: &[PathBuf]) -> Result<Outcome, CtlError> {
    let desired = files::load(paths)?;
    let (parsed, mut problems) = plan::validate_documents(&desired);
    problems.extend(plan::check_whole(
        &parsed,
        |key| desired.resources.contains_key(key),
        |key| {
            desired
                .resources
                .get(key)
                .map(|r| r.origin.file.clone())
                .unwrap_or_default()
        },
    ));
    if !problems.is_empty() {
        return Err(CtlError::Invalid(problems));
    }
    println!(
        "{} resource(s) in {} file(s) are valid",
        desired.resources.len(),
        desired.files
    );
    Ok(Outcome::Done)
}

/// `versions`: newest first.
pub async fn versions(
    client: &AdminClient,
    limit: u32,
    as_json: bool,
) -> Result<Outcome, CtlError> {
    let reply = client
        .get(&format!("/api/v1/versions?limit={limit}"))
        .await?;
    let items = items(&reply.body);
    if as_json {
        print!("{}", output::json(&items)?);
        return Ok(Outcome::Done);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|v| {
            vec![
                cell(&v["version"]),
                time(&v["created_at"]),
                cell(&v["author"]),
                v["changes"].as_array().map_or(0, Vec::len).to_string(),
                cell(&v["message"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["version", "created_at", "author", "changes", "message"],
            &rows
        )
    );
    Ok(Outcome::Done)
}

/// `show`: a version's metadata and what it changed, field by field.
pub async fn show(
    client: &AdminClient,
    style: Style,
    version: u64,
    as_json: bool,
) -> Result<Outcome, CtlError> {
    let info = client
        .get(&format!("/api/v1/versions/{version}"))
        .await?
        .body;
    let changes = client
        .get(&format!("/api/v1/versions/{version}/diff"))
        .await?
        .body;
    if as_json {
        let mut document = info.clone();
        document["changes"] = changes["changes"].clone();
        print!("{}", output::json(&document)?);
        return Ok(Outcome::Done);
    }
    println!(
        "{}",
        style.bold(&format!("version {}", cell(&info["version"])))
    );
    println!("created_at: {}", time(&info["created_at"]));
    println!("author:     {}", cell(&info["author"]));
    println!("message:    {}", cell(&info["message"]));
    println!();
    print!(
        "{}",
        diff::render(&server_changes(&changes["changes"]), &style)
    );
    Ok(Outcome::Done)
}

/// The server's `[{kind, id, op, before, after}]` as changes with their changed fields.
fn server_changes(changes: &Value) -> Vec<ResourceChange> {
    changes
        .as_array()
        .into_iter()
        .flatten()
        .map(|change| {
            let kind_name = change["kind"].as_str().unwrap_or("?");
            let op = match change["op"].as_str() {
                Some("create") => Op::Add,
                Some("delete") => Op::Remove,
                _ => Op::Change,
            };
            let fields = match (Kind::parse(kind_name), op) {
                (Some(kind), Op::Change) => {
                    let mut fields = diff::field_changes(
                        &canonical(kind, &change["before"]),
                        &canonical(kind, &change["after"]),
                    );
                    diff::show_defaults(&mut fields, |pointer| default_at(kind, pointer));
                    fields
                }
                _ => Vec::new(),
            };
            ResourceChange {
                resource: format!("{kind_name}/{}", change["id"].as_str().unwrap_or("?")),
                op,
                fields,
                note: None,
            }
        })
        .collect()
}

/// `rollback`: a new version whose config equals an earlier one's.
pub async fn rollback(
    client: &AdminClient,
    style: Style,
    version: u64,
    message: Option<&str>,
    as_json: bool,
) -> Result<Outcome, CtlError> {
    let reply = client
        .call(
            Method::POST,
            &format!("/api/v1/versions/{version}/rollback"),
            None,
            message,
        )
        .await?;
    if as_json {
        print!("{}", output::json(&reply.body)?);
        return Ok(Outcome::Done);
    }
    let body = &reply.body;
    print!(
        "{}",
        diff::render(&server_changes(&body["changes"]), &style)
    );
    if body["written"] == true {
        println!(
            "rolled back to version {version} as version {}",
            cell(&body["version"])
        );
    } else {
        println!(
            "the config already equals version {version}'s; nothing written (version {})",
            cell(&body["version"])
        );
    }
    Ok(Outcome::Done)
}

/// `data-planes`: the fleet as every replica recorded it.
pub async fn data_planes(client: &AdminClient, as_json: bool) -> Result<Outcome, CtlError> {
    let reply = client.get("/api/v1/data-planes").await?;
    let items = items(&reply.body);
    if as_json {
        print!("{}", output::json(&items)?);
        return Ok(Outcome::Done);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|dp| {
            let rejected = &dp["last_rejected"];
            vec![
                cell(&dp["node_id"]),
                cell(&dp["address"]),
                if dp["connected"] == true { "yes" } else { "no" }.to_owned(),
                cell(&dp["applied_version"]),
                cell(&dp["config_source"]),
                time(&dp["last_seen"]),
                cell(&dp["control_plane_id"]),
                cell(&dp["build_version"]),
                if rejected.is_null() {
                    "-".to_owned()
                } else {
                    format!(
                        "{}: {}",
                        cell(&rejected["version"]),
                        cell(&rejected["error"])
                    )
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "node_id",
                "address",
                "connected",
                "applied",
                "source",
                "last_seen",
                "replica",
                "build",
                "last_rejected",
            ],
            &rows
        )
    );
    Ok(Outcome::Done)
}

/// `status`: the current version and the fleet's counts.
pub async fn status(client: &AdminClient, as_json: bool) -> Result<Outcome, CtlError> {
    let body = client.get("/api/v1/status").await?.body;
    if as_json {
        print!("{}", output::json(&body)?);
        return Ok(Outcome::Done);
    }
    let fleet = &body["data_planes"];
    println!("version:        {}", cell(&body["version"]));
    if fleet.is_null() {
        println!("data planes:    unknown (the store is unreachable)");
    } else {
        println!(
            "data planes:    {} connected, {} on this version, {} rejected it",
            cell(&fleet["connected"]),
            cell(&fleet["applied_current"]),
            cell(&fleet["rejected_current"])
        );
    }
    println!(
        "store:          {} ({})",
        cell(&body["store"]),
        if body["store_reachable"] == true {
            "reachable"
        } else {
            "unreachable"
        }
    );
    println!("store id:       {}", cell(&body["store_id"]));
    println!("control plane:  {}", cell(&body["control_plane_id"]));
    if let Some(expiring) = body["certificates_expiring"]
        .as_array()
        .filter(|e| !e.is_empty())
    {
        let each: Vec<String> = expiring
            .iter()
            .map(|c| match c["days_left"].as_i64() {
                Some(days) if days < 0 => format!("{} (expired)", cell(&c["id"])),
                _ => format!("{} ({} days left)", cell(&c["id"]), cell(&c["days_left"])),
            })
            .collect();
        println!(
            "certificates:   expiring within 14 days: {}",
            each.join(", ")
        );
    }
    Ok(Outcome::Done)
}

/// `rollouts [ID]`: staged rollouts, newest first, or one of them.
pub async fn rollouts(
    client: &AdminClient,
    id: Option<&str>,
    as_json: bool,
) -> Result<Outcome, CtlError> {
    let path = match id {
        Some(id) => format!("{ROLLOUTS}/{}", segment(id)),
        None => ROLLOUTS.to_owned(),
    };
    let body = client
        .call_optional(ROLLOUTS, Method::GET, &path, None)
        .await?
        .body;
    if as_json {
        print!("{}", output::json(&body)?);
        return Ok(Outcome::Done);
    }
    if id.is_some() {
        print!("{}", describe(&body));
        return Ok(Outcome::Done);
    }
    let rows: Vec<Vec<String>> = items(&body)
        .iter()
        .map(|rollout| {
            let stage = &rollout["stage"];
            vec![
                cell(&rollout["id"]),
                cell(&rollout["version"]),
                match stage.get("percent") {
                    Some(percent) => format!("{}%", cell(percent)),
                    None => cell(stage),
                },
                cell(rollout.get("state").unwrap_or(&rollout["status"])),
                time(&rollout["created_at"]),
                cell(&rollout["halt_reason"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "id",
                "version",
                "stage",
                "state",
                "created_at",
                "halt_reason"
            ],
            &rows
        )
    );
    Ok(Outcome::Done)
}

/// `promote ID` / `abort ID`.
pub async fn rollout_action(
    client: &AdminClient,
    id: &str,
    action: &str,
) -> Result<Outcome, CtlError> {
    let path = format!("{ROLLOUTS}/{}/{action}", segment(id));
    let body = client
        .call_optional(ROLLOUTS, Method::POST, &path, None)
        .await?
        .body;
    let done = if action == "abort" {
        "aborted"
    } else {
        "promoted"
    };
    println!("{done} rollout {id}");
    if !body.is_null() {
        print!("{}", describe(&body));
    }
    Ok(Outcome::Done)
}

/// `tokens list`.
pub async fn tokens_list(client: &AdminClient, as_json: bool) -> Result<Outcome, CtlError> {
    let body = client
        .call_optional(TOKENS, Method::GET, TOKENS, None)
        .await?
        .body;
    let items = items(&body);
    if as_json {
        print!("{}", output::json(&items)?);
        return Ok(Outcome::Done);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|token| {
            vec![
                cell(&token["name"]),
                cell(&token["role"]),
                time(&token["created_at"]),
                time(&token["last_used_at"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["name", "role", "created_at", "last_used_at"], &rows)
    );
    Ok(Outcome::Done)
}

/// `tokens create NAME --role ROLE`: the token alone on standard output (for a pipe), the
/// reminder that it is shown once on standard error.
pub async fn tokens_create(
    client: &AdminClient,
    name: &str,
    role: &str,
    as_json: bool,
) -> Result<Outcome, CtlError> {
    let request = json!({"name": name, "role": role});
    let body = client
        .call_optional(TOKENS, Method::POST, TOKENS, Some(&request))
        .await?
        .body;
    if as_json {
        print!("{}", output::json(&body)?);
        return Ok(Outcome::Done);
    }
    match body["token"].as_str() {
        Some(token) => {
            println!("{token}");
            eprintln!("created token {name} ({role}); it is shown this once only: keep it now");
        }
        None => print!("{}", output::json(&body)?),
    }
    Ok(Outcome::Done)
}

/// `tokens revoke NAME`.
pub async fn tokens_revoke(client: &AdminClient, name: &str) -> Result<Outcome, CtlError> {
    let path = format!("{TOKENS}/{}", segment(name));
    client
        .call_optional(TOKENS, Method::DELETE, &path, None)
        .await?;
    println!("revoked token {name}");
    Ok(Outcome::Done)
}

/// A list answer's items: `{"items": [...]}`, or a bare list.
fn items(body: &Value) -> Vec<Value> {
    body.get("items")
        .unwrap_or(body)
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// One object as `key: value` lines, keys sorted; structures as one line of JSON.
fn describe(body: &Value) -> String {
    let Value::Object(fields) = output::sorted(body) else {
        return format!("{}\n", cell(body));
    };
    let width = fields.keys().map(String::len).max().unwrap_or(0) + 1;
    fields
        .iter()
        .map(|(name, value)| format!("{:<width$} {}\n", format!("{name}:"), cell(value)))
        .collect()
}

/// A path segment with everything but unreserved characters percent-encoded.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("ci-deploy_1.x"), "ci-deploy_1.x");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn server_changes_carry_their_changed_fields() {
        let changes = server_changes(&json!([
            {"kind": "routes", "id": "r", "op": "update",
             "before": {"paths": ["/a"], "upstream_id": "u", "priority": 0},
             "after": {"paths": ["/b"], "upstream_id": "u"}},
            {"kind": "upstreams", "id": "u", "op": "create", "after": {}}
        ]));
        assert_eq!(changes[0].resource, "routes/r");
        let pointers: Vec<&str> = changes[0]
            .fields
            .iter()
            .map(|f| f.pointer.as_str())
            .collect();
        assert_eq!(pointers, ["/paths/0"]);
        assert_eq!(changes[1].op, Op::Add);
    }
}
