//! The served schemas and the validation the servers run must agree: a client that checks a
//! document against `/api/v1/schemas/{kind}` (a validator of its own, fed the served JSON) is
//! refused by a write only for what the code alone can tell, and only as a [`Rule::Reference`]
//! (409) — or for a regular expression that does not compile in Rust's syntax.
//!
//! Where a rule moved from code into a pattern, the pattern is checked against the code it
//! replaced over many generated inputs, in both directions: a pattern that refused what the
//! code accepted would make stored documents fail to load.

use serde_json::{Value, json};

use super::*;
use crate::model::{Kind, Template};

/// A validator compiled from the schema as served: its JSON text, read back, as a client would.
fn served_validator(kind: Kind) -> jsonschema::Validator {
    let text = serde_json::to_string(schema_of(kind)).expect("a schema serialises");
    let served: Value = serde_json::from_str(&text).expect("and reads back");
    jsonschema::validator_for(&served).expect("the served schema compiles")
}

fn pattern_validator(pattern: &str) -> jsonschema::Validator {
    jsonschema::validator_for(&json!({"type": "string", "pattern": pattern})).expect("compiles")
}

/// A small deterministic generator: the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        // xorshift64*: quality is beside the point, repeatability is.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// A string of up to `max` pieces drawn from `pieces`.
    fn text(&mut self, pieces: &[&str], max: usize) -> String {
        let len = self.below(max + 1);
        (0..len).map(|_| self.pick(pieces)).collect()
    }
}

#[test]
fn every_cross_field_rule_is_in_the_served_schema() {
    let node = json!([{"host": "h", "port": 1}]);
    let jwt = |credential: Value| json!({"credentials": {"jwt-auth": credential}});
    let route_plugin = |name: &str, config: Value| json!({"paths": ["/"], "upstream_id": "u", "plugins": {name: config}});
    let sub = json!({"name": "a", "upstream_id": "u", "path": "/a"});
    // (kind, refused, the pointer of its violation, a document the same rule accepts)
    let cases = [
        (
            Kind::Upstreams,
            json!({"nodes": node, "pass_host": "rewrite"}),
            "/upstream_host",
            json!({"nodes": node, "pass_host": "rewrite", "upstream_host": "a.svc"}),
        ),
        (
            Kind::Upstreams,
            json!({"nodes": node, "lb": "consistent_hash"}),
            "/hash_on",
            json!({"nodes": node, "lb": "consistent_hash", "hash_on": {"source": "uri"}}),
        ),
        (
            Kind::Upstreams,
            json!({"nodes": node, "lb": "ewma", "hash_on": {"source": "uri"}}),
            "/hash_on",
            json!({"nodes": node, "lb": "ewma"}),
        ),
        (
            Kind::Upstreams,
            json!({"nodes": node, "lb": "consistent_hash", "hash_on": {"source": "header"}}),
            "/hash_on/name",
            json!({"nodes": node, "lb": "consistent_hash", "hash_on": {"source": "header", "name": "x-user"}}),
        ),
        (
            Kind::Upstreams,
            json!({"nodes": node, "lb": "consistent_hash", "hash_on": {"source": "remote_addr", "name": "x"}}),
            "/hash_on/name",
            json!({"nodes": node, "lb": "consistent_hash", "hash_on": {"source": "remote_addr"}}),
        ),
        (
            Kind::Upstreams,
            json!({"nodes": node, "scheme": "h2c", "tls": {"verify": false}}),
            "/tls",
            json!({"nodes": node, "scheme": "https", "tls": {"verify": false}}),
        ),
        (
            Kind::Routes,
            json!({"paths": ["/"], "upstream": {"nodes": node, "hash_on": {"source": "uri"}}}),
            "/upstream/hash_on",
            json!({"paths": ["/"], "upstream": {"nodes": node}}),
        ),
        (
            Kind::Routes,
            json!({"paths": ["/"]}),
            "",
            json!({"paths": ["/"], "plugins": {"batch-requests": {}}}),
        ),
        (
            Kind::Routes,
            json!({"paths": ["/"], "upstream_id": "u", "upstream": {"nodes": node}}),
            "/upstream",
            json!({"paths": ["/"], "upstream": {"nodes": node}}),
        ),
        (
            Kind::Routes,
            json!({"paths": ["/"], "upstream_id": "u", "batch": {"requests": [sub]}}),
            "/batch",
            json!({"paths": ["/"], "batch": {"requests": [sub]}}),
        ),
        (
            Kind::Routes,
            json!({"paths": ["/"], "batch": {"requests": [{"name": "a", "upstream_id": "u", "path": "/a", "group": "g"}]}}),
            "/batch/requests/0/group",
            json!({"paths": ["/"], "batch": {"merge": "deep", "requests": [{"name": "a", "upstream_id": "u", "path": "/a", "group": "g"}]}}),
        ),
        (
            Kind::Routes,
            json!({"paths": ["/"], "upstream_id": "u", "headers": [{"name": "x", "op": "exists", "value": "1"}]}),
            "/headers/0/value",
            json!({"paths": ["/"], "upstream_id": "u", "headers": [{"name": "x", "op": "exists"}]}),
        ),
        (
            Kind::Consumers,
            jwt(json!({"key": "k"})),
            "/credentials/jwt-auth/secret",
            jwt(json!({"key": "k", "secret": "12345678"})),
        ),
        (
            Kind::Consumers,
            jwt(json!({"key": "k", "algorithm": "RS256"})),
            "/credentials/jwt-auth/public_key",
            jwt(json!({"key": "k", "algorithm": "RS256", "public_key": "PEM"})),
        ),
        (
            Kind::Consumers,
            json!({"credentials": {"key-auth": {"key": "12345678", "key_sha256": "0".repeat(64)}}}),
            "/credentials/key-auth/key_sha256",
            json!({"credentials": {"key-auth": {"key_sha256": "0".repeat(64)}}}),
        ),
        (
            Kind::Consumers,
            json!({"credentials": {"basic-auth": {"username": "u"}}}),
            "/credentials/basic-auth/password_hash",
            json!({"credentials": {"basic-auth": {"username": "u", "password": "p"}}}),
        ),
        (
            Kind::Routes,
            route_plugin("request-validation", json!({"rejected_code": 422})),
            "/plugins/request-validation",
            route_plugin("request-validation", json!({"header_schema": {}})),
        ),
        (
            Kind::GlobalRules,
            json!({"plugins": {}}),
            "/plugins",
            json!({"plugins": {"prometheus": {}}}),
        ),
        (
            Kind::Routes,
            route_plugin(
                "ip-restriction",
                json!({"whitelist": ["10.0.0.0/8"], "blacklist": ["::1"]}),
            ),
            "/plugins/ip-restriction/blacklist",
            route_plugin("ip-restriction", json!({"blacklist": ["::1"]})),
        ),
        (
            Kind::Routes,
            route_plugin(
                "cors",
                json!({"allow_credential": true, "allow_origins": "https://a", "allow_methods": "GET"}),
            ),
            "/plugins/cors/allow_headers",
            route_plugin(
                "cors",
                json!({"allow_credential": true, "allow_origins": "https://a", "allow_methods": "GET", "allow_headers": "**"}),
            ),
        ),
        (
            Kind::Routes,
            route_plugin(
                "cors",
                json!({"allow_credential": true, "allow_origins": "https://a, * ", "allow_methods": "GET", "allow_headers": "x"}),
            ),
            "/plugins/cors/allow_origins",
            route_plugin(
                "cors",
                json!({"allow_credential": false, "allow_origins": "https://a, * "}),
            ),
        ),
        (
            Kind::Routes,
            route_plugin(
                "cors",
                json!({"allow_credential": true, "allow_origins": ["**"], "allow_methods": ["GET", "\u{85}*"], "allow_headers": "x"}),
            ),
            "/plugins/cors/allow_methods/1",
            route_plugin(
                "cors",
                json!({"allow_credential": true, "allow_origins": ["**"], "allow_methods": ["GET", "**"], "allow_headers": "x"}),
            ),
        ),
    ];
    for (kind, refused, pointer, accepted) in cases {
        let served = served_validator(kind);
        assert!(
            !served.is_valid(&refused),
            "the served schema accepts {refused}"
        );
        assert!(
            served.is_valid(&accepted),
            "the served schema refuses {accepted}"
        );
        let violations = validate_resource(kind, &refused).expect_err("refused on write");
        assert!(
            violations.iter().any(|v| v.pointer == pointer),
            "{refused}: expected {pointer}, got {violations:?}"
        );
        assert!(
            violations.iter().all(|v| v.rule == Rule::Schema),
            "{violations:?}"
        );
        // A rule's violation speaks the rule, not the schema keyword.
        assert!(
            violations
                .iter()
                .all(|v| !v.message.contains("False schema")),
            "{violations:?}"
        );
        validate_resource(kind, &accepted).unwrap_or_else(|e| panic!("{accepted}: {e:?}"));
    }
}

#[test]
fn what_the_schema_cannot_say_is_a_reference_violation() {
    let sub = |name: &str, path: &str| json!({"name": name, "upstream_id": "u", "path": path});
    let batch = |requests: Value| json!({"paths": ["/p/:id"], "batch": {"requests": requests}});
    // (document the served schema accepts, the pointer of the violation the code finds)
    let cases = [
        (
            batch(json!([sub("a", "/x"), sub("a", "/y")])),
            "/batch/requests/1/name",
        ),
        (
            batch(json!([sub("a", "/{resp.ghost./id}")])),
            "/batch/requests/0/path",
        ),
        (
            batch(json!([sub("a", "/{resp.a}")])),
            "/batch/requests/0/path",
        ),
        (
            batch(json!([sub("a", "/{resp.b}"), sub("b", "/{resp.a}")])),
            "/batch/requests/0",
        ),
        (
            batch(json!([sub("a", "/{param.other}")])),
            "/batch/requests/0/path",
        ),
        (
            json!({"paths": ["/a/:id/b/:id"], "upstream_id": "u"}),
            "/paths/0",
        ),
    ];
    let served = served_validator(Kind::Routes);
    for (document, pointer) in cases {
        assert!(served.is_valid(&document), "{document}");
        let violations = validate_resource(Kind::Routes, &document).expect_err("refused");
        assert!(
            violations.iter().any(|v| v.pointer == pointer),
            "{violations:?}"
        );
        assert!(Violation::all_references(&violations), "{violations:?}");
    }
    // A node listed twice: refused on writes, as a uniqueness rule.
    let twice = json!({"nodes": [{"host": "h", "port": 1}, {"host": "H", "port": 1, "weight": 2}]});
    assert!(served_validator(Kind::Upstreams).is_valid(&twice));
    let parsed = validate_resource(Kind::Upstreams, &twice).expect("still loads");
    assert!(Violation::all_references(&check_new_document(&parsed)));
    // A regular expression ECMA-262 reads but Rust's engine does not: the one shape rule the
    // schema cannot say, answered like a schema violation.
    let lookahead = json!({"paths": ["/"], "upstream_id": "u",
        "headers": [{"name": "x", "op": "regex", "value": "a(?=b)"}]});
    assert!(served.is_valid(&lookahead));
    let violations = validate_resource(Kind::Routes, &lookahead).expect_err("refused");
    assert_eq!(violations[0].pointer, "/headers/0/value");
    assert_eq!(violations[0].rule, Rule::Schema);
    // Likewise a JSON Schema value (`request-validation`) that its top-level keywords' types
    // allow but that does not compile: only compiling it tells, with the keyword's pointer.
    let nested = json!({"paths": ["/"], "upstream_id": "u", "plugins": {"request-validation":
        {"body_schema": {"properties": {"a": {"minimum": "0"}}}}}});
    assert!(served.is_valid(&nested));
    let violations = validate_resource(Kind::Routes, &nested).expect_err("refused");
    assert_eq!(
        violations[0].pointer,
        "/plugins/request-validation/body_schema/properties/a/minimum"
    );
    assert_eq!(violations[0].rule, Rule::Schema);
}

#[test]
fn server_managed_fields_are_typed() {
    for (document, pointer) in [
        (json!({"revision": "3"}), "/revision"),
        (json!({"created_at": -1}), "/created_at"),
        (json!({"updated_at": 1.5}), "/updated_at"),
        (json!({"id": 5}), "/id"),
        (json!({"id": "a b"}), "/id"),
    ] {
        let violations = check_server_fields(&document, "");
        assert_eq!(violations.len(), 1, "{document}: {violations:?}");
        assert_eq!(violations[0].pointer, pointer);
    }
    let written_back = json!({"id": "r1", "created_at": 1_700_000_000, "updated_at": 1_700_000_001, "revision": 7, "paths": 1});
    assert_eq!(check_server_fields(&written_back, ""), []);
    // The same types are in every kind's served schema, marked read-only.
    for kind in Kind::ALL {
        let revision = &schema_of(kind)["properties"]["revision"];
        assert_eq!(revision["type"], "integer");
        assert_eq!(revision["readOnly"], true);
    }
}

#[test]
fn integral_numbers_read_as_integers() {
    let document = json!({"nodes": [{"host": "h", "port": 80.0, "weight": 2.0}], "timeouts": {"read_ms": 1e3}});
    let Ok(Parsed::Upstream(upstream)) = validate_resource(Kind::Upstreams, &document) else {
        panic!("3.0 is an integer to JSON Schema, and so to the typed model")
    };
    assert_eq!((upstream.nodes[0].port, upstream.nodes[0].weight), (80, 2));
    assert_eq!(upstream.timeouts.read_ms, 1000);
    assert!(
        validate_resource(
            Kind::Upstreams,
            &json!({"nodes": [{"host": "h", "port": 80.5}]})
        )
        .is_err()
    );
}

#[test]
fn the_cidr_pattern_is_exactly_what_parses() {
    let pattern = pattern_validator(&route::cidr_pattern());
    // What the schema said before: a shape, then `parse_cidr` decided.
    let before = regex::Regex::new(r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$").expect("compiles");
    let mut rng = Rng(0x5eed_c1d2);
    let hex = [
        "0", "1", "9", "a", "F", "ff", "ffff", "fffff", "00", "0db8", "12345",
    ];
    let octets = [
        "0", "1", "9", "10", "99", "100", "199", "255", "256", "300", "01", "001", "999",
    ];
    let lengths = [
        "", "/0", "/8", "/32", "/33", "/64", "/128", "/129", "/008", "/0032", "/", "/x",
    ];
    let mut checked = 0;
    for _ in 0..30_000 {
        let v4 = |rng: &mut Rng| {
            let parts = 3 + rng.below(3);
            (0..parts)
                .map(|_| rng.pick(&octets))
                .collect::<Vec<_>>()
                .join(".")
        };
        let address = match rng.below(3) {
            0 => v4(&mut rng),
            _ => {
                let groups = rng.below(10);
                let mut text = String::new();
                let gap = rng.below(groups + 2);
                for i in 0..groups {
                    if i == gap {
                        text.push(':');
                    }
                    if i > 0 {
                        text.push(':');
                    }
                    text.push_str(rng.pick(&hex));
                }
                if gap >= groups {
                    text.push_str("::");
                }
                if rng.below(4) == 0 {
                    text.push(':');
                    text.push_str(&v4(&mut rng));
                }
                text
            }
        };
        let mut text = format!("{address}{}", rng.pick(&lengths));
        if rng.below(8) == 0 && !text.is_empty() {
            // A stray character somewhere.
            let at = rng.below(text.len());
            if text.is_char_boundary(at) {
                text.insert(at, *[':', '.', '/', 'g'].get(rng.below(4)).unwrap_or(&':'));
            }
        }
        let parses = before.is_match(&text) && parse_cidr(&text).is_ok();
        assert_eq!(pattern.is_valid(&json!(text)), parses, "{text:?}");
        checked += usize::from(parses);
    }
    assert!(
        checked > 3000,
        "too few valid addresses generated: {checked}"
    );
    for valid in [
        "::",
        "::1",
        "fd00::/8",
        "::ffff:10.0.0.1",
        "64:ff9b::1.2.3.4",
        "1:2:3:4:5:6:7:8",
        "1::",
        "0.0.0.0/0",
    ] {
        assert!(pattern.is_valid(&json!(valid)), "{valid}");
    }
}

#[test]
fn the_path_pattern_is_exactly_what_check_path_accepts() {
    let pattern = pattern_validator(route::PATH_PATTERN);
    let before = regex::Regex::new(r"^/[^\s?#]*$").expect("compiles");
    let mut rng = Rng(0x9a7f);
    let pieces = [
        "/", "/", ":", "a", "Z", "_", "1", "*", "-", " ", "?", "#", "é", ":id", ":x",
    ];
    for _ in 0..30_000 {
        let text = format!("/{}", rng.text(&pieces, 8));
        if route::repeated_segment_name(&text).is_some() {
            continue;
        }
        let accepted = before.is_match(&text) && check_path(&text).is_ok();
        assert_eq!(pattern.is_valid(&json!(text)), accepted, "{text:?}");
    }
}

#[test]
fn the_template_patterns_are_exactly_what_parses() {
    let anywhere = pattern_validator(&batch::template_pattern("", ""));
    let path = pattern_validator(&batch::template_pattern("/", r"\s#"));
    let before = regex::Regex::new(r"^/[^\s#]*$").expect("compiles");
    let mut rng = Rng(0x7e3a);
    let pieces = [
        "{", "}", "{", ".", "/", "a", "x", "-", "param", "last", "query", "resp", "arg", "header",
        "{param.", "{resp.", "{last}", "{query}", "{arg.", "{header.", " ", "#", "A",
    ];
    for _ in 0..40_000 {
        let text = rng.text(&pieces, 7);
        let parses = Template::parse(&text).is_ok();
        assert_eq!(anywhere.is_valid(&json!(text)), parses, "{text:?}");
        let text = format!("/{text}");
        let parses = before.is_match(&text) && Template::parse(&text).is_ok();
        assert_eq!(path.is_valid(&json!(text)), parses, "{text:?}");
    }
}

#[test]
fn cors_stars_are_what_the_data_plane_reads() {
    let served = served_validator(Kind::Routes);
    let mut rng = Rng(0xc0c5);
    let pieces = ["*", "*", " ", "\t", "\u{85}", "\u{a0}", ",", "a", "**"];
    for _ in 0..20_000 {
        let joined = rng.text(&pieces, 6);
        let items: Vec<String> = (0..rng.below(3))
            .map(|_| rng.text(&pieces, 3).replace(',', ""))
            .filter(|item| !item.is_empty())
            .collect();
        for list in [json!(joined), json!(items)] {
            let Ok(read) = serde_json::from_value::<crate::plugins::cors::List>(list.clone())
            else {
                continue;
            };
            let star = read.items().iter().any(|item| item == "*");
            let route = json!({"paths": ["/"], "upstream_id": "u", "plugins": {"cors": {
                "allow_credential": true, "allow_origins": list,
                "allow_methods": "GET", "allow_headers": "x"
            }}});
            assert_eq!(served.is_valid(&route), !star, "{list}");
        }
    }
}

#[test]
fn hedge_settings_mean_the_same_to_the_served_schema_and_the_model() {
    use crate::model::{Hedge, HedgeDelay, HedgeOverride};
    let node = json!([{"host": "h", "port": 1}]);
    // (hedge, what the model reads from it; None: refused)
    let cases = [
        (
            json!({"delay_ms": 30, "max_extra": 1}),
            Some(Hedge {
                delay_ms: HedgeDelay::Millis(30),
                max_extra: 1,
            }),
        ),
        (
            json!({"delay_ms": 1}),
            Some(Hedge {
                delay_ms: HedgeDelay::Millis(1),
                max_extra: 1,
            }),
        ),
        (
            json!({"delay_ms": 20.0, "max_extra": 3}),
            Some(Hedge {
                delay_ms: HedgeDelay::Millis(20),
                max_extra: 3,
            }),
        ),
        (
            json!({"delay_ms": "p95", "max_extra": 2}),
            Some(Hedge {
                delay_ms: HedgeDelay::P95,
                max_extra: 2,
            }),
        ),
        (json!({"delay_ms": 0}), None),
        (json!({"delay_ms": -5}), None),
        (json!({"delay_ms": 2.5}), None),
        (json!({"delay_ms": "p99"}), None),
        (json!({"delay_ms": "30"}), None),
        (json!({"delay_ms": null}), None),
        (json!({"max_extra": 1}), None),
        (json!({"delay_ms": 30, "max_extra": 0}), None),
        (json!({"delay_ms": 30, "max_extra": 4}), None),
        (json!({"delay_ms": 30, "extra": 1}), None),
    ];
    // `false` turns an upstream's hedging off on a route or a sub-request; an upstream has no
    // hedging to turn off (it leaves `hedge` out), and `true` names no policy.
    let switches = [
        (
            json!(false),
            [
                None,
                Some(HedgeOverride::Off),
                None,
                Some(HedgeOverride::Off),
            ],
        ),
        (json!(true), [None, None, None, None]),
    ];
    let cases = cases
        .into_iter()
        .map(|(hedge, expected)| (hedge, [expected.map(HedgeOverride::Policy); 4]))
        .chain(switches);
    for (hedge, expected_at) in cases {
        let sub = json!({"name": "a", "upstream_id": "u", "path": "/a", "hedge": hedge});
        let documents = [
            (
                Kind::Upstreams,
                json!({"nodes": node, "hedge": hedge}),
                "/hedge",
            ),
            (
                Kind::Routes,
                json!({"paths": ["/"], "upstream_id": "u", "hedge": hedge}),
                "/hedge",
            ),
            (
                Kind::Routes,
                json!({"paths": ["/"], "upstream": {"nodes": node, "hedge": hedge}}),
                "/upstream/hedge",
            ),
            (
                Kind::Routes,
                json!({"paths": ["/"], "batch": {"requests": [sub]}}),
                "/batch/requests/0/hedge",
            ),
        ];
        for ((kind, document, at), expected) in documents.into_iter().zip(expected_at) {
            assert_eq!(
                served_validator(kind).is_valid(&document),
                expected.is_some(),
                "served schema on {document}"
            );
            match (validate_resource(kind, &document), expected) {
                (Ok(parsed), Some(expected)) => {
                    let read = match parsed {
                        Parsed::Upstream(u) => u.hedge.map(HedgeOverride::Policy),
                        Parsed::Route(r) => r
                            .hedge
                            .or(r.upstream.and_then(|u| u.hedge.map(HedgeOverride::Policy)))
                            .or(r.batch.and_then(|b| b.requests[0].hedge)),
                        other => panic!("{other:?}"),
                    };
                    assert_eq!(read, Some(expected), "{document}");
                }
                (Err(violations), None) => assert!(
                    violations
                        .iter()
                        .all(|v| v.rule == Rule::Schema && v.pointer.starts_with(at)),
                    "{document}: {violations:?}"
                ),
                (result, expected) => panic!("{document}: {result:?}, expected {expected:?}"),
            }
        }
    }
}
