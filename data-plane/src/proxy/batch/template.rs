//! Rendering a parsed template against one client request and the answers received so far.

use std::borrow::Cow;

use gateway_proto::model::{Segment, Template, Variable};
use http::HeaderMap;
use serde_json::Value;

/// What a template can read of the client's request. Every string is raw, as received.
#[derive(Debug)]
pub struct Context<'a> {
    /// The request path, without the query.
    pub path: &'a str,
    /// The query string, without `?`; empty when there is none.
    pub query: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// Named segments captured by the route path.
    pub params: &'a [(String, String)],
}

/// Where the rendered text goes, which decides how substituted values are escaped.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// A path and query. A substituted value never changes the URI's structure:
    /// - before the template's `?` (the path), a value stays inside its path segment: values
    ///   from the client's URI (`param`, `last`, `query`, `arg`), already URI-encoded, are
    ///   copied with `/`, `\`, `?`, `#` and `;` percent-encoded (a `%2F` the client sent stays as
    ///   is); and a segment that a value helped make may not be `.` or `..` (also as `%2E`),
    ///   which would climb out of the template's path ([`RenderError::DotSegment`]);
    /// - after the `?` (the query), values from the client's query (`query`, `arg`) are copied
    ///   as received, with `#` encoded; values from its path (`param`, `last`) also get `&`
    ///   encoded, since a path segment may hold one and it would add a query argument;
    /// - values from headers or JSON answers are percent-encoded everywhere (every byte but
    ///   RFC 3986's unreserved characters).
    Uri,
    /// A header value or a body: values are copied as is.
    Text,
}

/// Why a template could not be rendered for this request.
#[derive(Debug, PartialEq, Eq)]
pub enum RenderError {
    /// `{resp.NAME./ptr}` points at nothing in NAME's answer.
    MissingValue {
        /// The sub-request whose answer was read.
        name: String,
        /// The pointer that resolved to nothing.
        pointer: String,
    },
    /// A substituted value made a path segment `.` or `..`: the request's input, not the
    /// upstream, is at fault.
    DotSegment {
        /// The segment as rendered.
        segment: String,
    },
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::MissingValue { name, pointer } => {
                write!(f, "the answer of {name:?} has no value at {pointer:?}")
            }
            RenderError::DotSegment { segment } => write!(
                f,
                "a value of the request makes the path segment {segment:?}, which is refused"
            ),
        }
    }
}

/// Where a substituted value comes from, which decides what in it must be escaped.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Origin {
    /// The client's path (`param`, `last`): URI-encoded as a path segment.
    ClientPath,
    /// The client's query (`query`, `arg`): URI-encoded as a query.
    ClientQuery,
    /// A header or a JSON answer: any text.
    Text,
}

/// The path segment being rendered, for the dot-segment rule of [`Place::Uri`].
#[derive(Debug, Default)]
struct OpenSegment {
    /// Where it starts in the output.
    start: usize,
    /// Whether a substituted value is part of it.
    substituted: bool,
}

impl OpenSegment {
    /// Fails if the segment ending at the end of `out` is a dot segment a value made.
    fn close(&self, out: &str) -> Result<(), RenderError> {
        let segment = out.get(self.start..).unwrap_or_default();
        if self.substituted && is_dot_segment(segment) {
            return Err(RenderError::DotSegment {
                segment: segment.to_owned(),
            });
        }
        Ok(())
    }
}

/// Renders `template`. `answer` gives the JSON answer of a sub-request by name; the executor
/// only renders a template once every sub-request it names has answered.
pub fn render<'v>(
    template: &Template,
    context: &Context<'_>,
    answer: impl Fn(&str) -> Option<&'v Value>,
    place: Place,
) -> Result<String, RenderError> {
    // The literals plus room for typical values: usually one allocation rather than a doubling
    // series (a long value, or the query a batch appends afterwards, may still grow it).
    let estimate = template
        .segments
        .iter()
        .map(|segment| match segment {
            Segment::Literal(text) => text.len(),
            Segment::Var(_) => 16,
        })
        .sum();
    let mut out = String::with_capacity(estimate);
    // Only a literal can end the path: every value put in the path has its `?` encoded.
    let mut in_path = place == Place::Uri;
    let mut open = OpenSegment::default();
    for segment in &template.segments {
        let variable = match segment {
            Segment::Literal(text) if in_path => {
                in_path = push_path_literal(&mut out, text, &mut open)?;
                continue;
            }
            Segment::Literal(text) => {
                out.push_str(text);
                continue;
            }
            Segment::Var(variable) => variable,
        };
        let (value, origin) = value_of(variable, context, &answer)?;
        match (place, origin) {
            (Place::Text, _) => out.push_str(&value),
            (Place::Uri, Origin::Text) => percent_encode(&mut out, &value),
            (Place::Uri, Origin::ClientPath | Origin::ClientQuery) if in_path => {
                // `;` too: Tomcat reads `..;x` as `..`.
                escape(&mut out, &value, |b| {
                    matches!(b, b'/' | b'\\' | b'?' | b'#' | b';')
                });
            }
            (Place::Uri, Origin::ClientPath) => {
                escape(&mut out, &value, |b| matches!(b, b'#' | b'&'));
            }
            (Place::Uri, Origin::ClientQuery) => escape(&mut out, &value, |b| b == b'#'),
        }
        if in_path && !value.is_empty() {
            open.substituted = true;
        }
    }
    if in_path {
        open.close(&out)?;
    }
    Ok(out)
}

/// The value of `variable` for this request, and where it comes from.
fn value_of<'a, 'v>(
    variable: &Variable,
    context: &Context<'a>,
    answer: &impl Fn(&str) -> Option<&'v Value>,
) -> Result<(Cow<'a, str>, Origin), RenderError>
where
    'v: 'a,
{
    let value = match variable {
        // A missing parameter cannot happen once the schema has checked that every path
        // captures it; an empty value is the harmless answer if it ever does.
        Variable::Param(name) => (
            Cow::Borrowed(
                context
                    .params
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or("", |(_, v)| v.as_str()),
            ),
            Origin::ClientPath,
        ),
        Variable::Last => (
            Cow::Borrowed(context.path.rsplit('/').next().unwrap_or("")),
            Origin::ClientPath,
        ),
        Variable::Query => (Cow::Borrowed(context.query), Origin::ClientQuery),
        Variable::Arg(name) => (
            Cow::Borrowed(arg(context.query, name).unwrap_or("")),
            Origin::ClientQuery,
        ),
        // Non-UTF-8 header bytes are dropped rather than guessed at.
        Variable::Header(name) => (
            Cow::Borrowed(
                context
                    .headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            ),
            Origin::Text,
        ),
        Variable::Resp { name, pointer } => {
            let value = answer(name)
                .and_then(|body| body.pointer(pointer))
                .ok_or_else(|| RenderError::MissingValue {
                    name: name.clone(),
                    pointer: pointer.clone(),
                })?;
            let text = match value {
                Value::String(text) => Cow::Borrowed(text.as_str()),
                Value::Null => Cow::Borrowed(""),
                other => Cow::Owned(other.to_string()),
            };
            (text, Origin::Text)
        }
    };
    Ok(value)
}

/// Appends a literal of the path part, closing every segment it ends. Returns whether the
/// text is still in the path afterwards (false once the literal holds the template's `?`).
fn push_path_literal(
    out: &mut String,
    text: &str,
    open: &mut OpenSegment,
) -> Result<bool, RenderError> {
    let mut rest = text;
    while let Some(at) = rest.find(['/', '?']) {
        out.push_str(&rest[..at]);
        open.close(out)?;
        let (separator, after) = rest[at..].split_at(1);
        out.push_str(separator);
        if separator == "?" {
            out.push_str(after);
            return Ok(false);
        }
        *open = OpenSegment {
            start: out.len(),
            substituted: false,
        };
        rest = after;
    }
    out.push_str(rest);
    Ok(true)
}

/// Whether `segment` is `.` or `..`, with any dot written as `%2E` (RFC 3986 §6.2.2.2: an
/// encoded unreserved character means the character, and servers decode it).
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(b".") {
            rest = after;
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

/// The raw value of the first query argument called `name`.
fn arg<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_encoded(out: &mut String, b: u8) {
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// Copies `value`, percent-encoding the ASCII bytes `encode` picks.
fn escape(out: &mut String, value: &str, encode: impl Fn(u8) -> bool) {
    let mut rest = value;
    // `encode` picks ASCII bytes only, so `at` is always a character boundary.
    while let Some(at) = rest.bytes().position(&encode) {
        out.push_str(&rest[..at]);
        push_encoded(out, rest.as_bytes()[at]);
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
}

/// Percent-encodes every byte but RFC 3986's unreserved characters.
fn percent_encode(out: &mut String, value: &str) {
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            push_encoded(out, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    #[test]
    fn templates_render_per_place() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("a b/c"));
        let params = vec![("item".to_owned(), "14%2086".to_owned())];
        let context = Context {
            path: "/batch/product/14286",
            query: "item=14286&lang=en&flag&lang=fr",
            headers: &headers,
            params: &params,
        };
        let user = json!({"id": 7, "name": "Ann/Lee", "tags": ["x"], "none": null});
        let answer = |name: &str| (name == "user").then_some(&user);
        // (template, place, rendered)
        let cases = [
            ("/c/{param.item}", Place::Uri, "/c/14%2086"),
            ("/c/{last}", Place::Uri, "/c/14286"),
            (
                "/c.php?{query}",
                Place::Uri,
                "/c.php?item=14286&lang=en&flag&lang=fr",
            ),
            (
                "/c?l={arg.lang}&f={arg.flag}&m={arg.missing}",
                Place::Uri,
                "/c?l=en&f=&m=",
            ),
            ("/u/{header.x-user}", Place::Uri, "/u/a%20b%2Fc"),
            ("{header.x-user}", Place::Text, "a b/c"),
            ("{header.x-missing}", Place::Text, ""),
            ("/o?u={resp.user./id}", Place::Uri, "/o?u=7"),
            ("/o/{resp.user./name}", Place::Uri, "/o/Ann%2FLee"),
            ("{resp.user./name}", Place::Text, "Ann/Lee"),
            ("{resp.user./tags}", Place::Text, "[\"x\"]"),
            ("[{resp.user./none}]", Place::Text, "[]"),
            (r#"{"id": {resp.user./id}}"#, Place::Text, r#"{"id": 7}"#),
        ];
        for (text, place, rendered) in cases {
            let template = Template::parse(text).unwrap();
            assert_eq!(
                render(&template, &context, answer, place).as_deref(),
                Ok(rendered),
                "{text}"
            );
        }
        let missing = Template::parse("/{resp.user./nope}").unwrap();
        assert_eq!(
            render(&missing, &context, answer, Place::Uri),
            Err(RenderError::MissingValue {
                name: "user".into(),
                pointer: "/nope".into()
            })
        );
    }

    /// A client value put in a sub-request's path cannot leave its segment or the path.
    #[test]
    fn client_values_in_a_batch_path_stay_in_their_segment() {
        let headers = HeaderMap::new();
        let render_one = |text: &str, path: &str, query: &str, params: &[(String, String)]| {
            let context = Context {
                path,
                query,
                headers: &headers,
                params,
            };
            render(
                &Template::parse(text).unwrap(),
                &context,
                |_| None,
                Place::Uri,
            )
        };
        // (template, client query, rendered)
        let cases = [
            (
                "/myapi/catalog/{arg.id}",
                "id=../../admin/users",
                "/myapi/catalog/..%2F..%2Fadmin%2Fusers",
            ),
            (
                "/myapi/catalog/{arg.id}",
                "id=x?debug=1",
                "/myapi/catalog/x%3Fdebug=1",
            ),
            (
                "/myapi/catalog/{arg.id}/x",
                "id=..;",
                "/myapi/catalog/..%3B/x",
            ),
            (
                "/myapi/catalog/{arg.id}",
                "id=a%2Fb",
                "/myapi/catalog/a%2Fb",
            ),
            (
                "/myapi/catalog/{arg.id}",
                "id=a\\b#c",
                "/myapi/catalog/a%5Cb%23c",
            ),
            ("/a/{query}/b", "x=1/2?3", "/a/x=1%2F2%3F3/b"),
            // Dots that are not a whole segment are harmless.
            ("/myapi/catalog/{arg.id}", "id=...", "/myapi/catalog/..."),
            ("/myapi/{arg.id}.json", "id=.", "/myapi/..json"),
            ("/myapi/v.{arg.id}/x", "id=.", "/myapi/v../x"),
            // After the `?`: the client's query values as received, `#` encoded.
            (
                "/r?id={arg.id}&all={query}",
                "id=a/b?c",
                "/r?id=a/b?c&all=id=a/b?c",
            ),
            ("/r?id={arg.id}", "id=a#b", "/r?id=a%23b"),
            // Literal dot segments of the template itself are the operator's.
            ("/a/../{arg.id}", "id=b", "/a/../b"),
        ];
        for (text, query, rendered) in cases {
            assert_eq!(
                render_one(text, "/batch", query, &[]).as_deref(),
                Ok(rendered),
                "{text} ?{query}"
            );
        }
        // A value that makes a whole segment `.` or `..` (however spelled) is refused.
        for (text, query) in [
            ("/myapi/catalog/{arg.id}", "id=.."),
            ("/myapi/catalog/{arg.id}", "id=."),
            ("/myapi/catalog/{arg.id}/x", "id=%2e%2E"),
            ("/myapi/catalog/{arg.id}?x=1", "id=.%2E"),
            ("/myapi/{arg.a}{arg.b}/x", "a=.&b=."),
            ("/myapi/{query}", "."),
        ] {
            assert!(
                matches!(
                    render_one(text, "/batch", query, &[]),
                    Err(RenderError::DotSegment { .. })
                ),
                "{text} ?{query}"
            );
        }
        // A path segment may hold `&`, `?` (as %3F) or `..`: in a query it adds no argument.
        let params = [("item".to_owned(), "1&admin=1#x".to_owned())];
        assert_eq!(
            render_one(
                "/r?item={param.item}&last={last}",
                "/batch/1&admin=1#x",
                "",
                &params
            )
            .as_deref(),
            Ok("/r?item=1%26admin=1%23x&last=1%26admin=1%23x")
        );
        let dots = [("item".to_owned(), "..".to_owned())];
        for text in ["/c/{param.item}", "/c/{last}/d"] {
            assert!(
                matches!(
                    render_one(text, "/batch/..", "", &dots),
                    Err(RenderError::DotSegment { .. })
                ),
                "{text}"
            );
        }
        assert_eq!(
            render_one("/c?i={param.item}", "/batch/..", "", &dots).as_deref(),
            Ok("/c?i=..")
        );
    }

    #[test]
    fn dot_segments_are_recognised_however_spelled() {
        for (segment, dot) in [
            (".", true),
            ("..", true),
            ("%2e", true),
            ("%2E.", true),
            ("%2e%2e", true),
            ("", false),
            ("...", false),
            ("..a", false),
            ("%2", false),
            ("%2f", false),
        ] {
            assert_eq!(is_dot_segment(segment), dot, "{segment:?}");
        }
    }
}
