//! Rendering a parsed template against one client request and the answers received so far.

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
    /// A path and query. Values taken from the client's URI (`param`, `last`, `query`, `arg`)
    /// are already URI-encoded and are copied as is; values from headers or JSON answers are
    /// percent-encoded, so that they cannot add path segments or query arguments.
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
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::MissingValue { name, pointer } => {
                write!(f, "the answer of {name:?} has no value at {pointer:?}")
            }
        }
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
    for segment in &template.segments {
        let variable = match segment {
            Segment::Literal(text) => {
                out.push_str(text);
                continue;
            }
            Segment::Var(variable) => variable,
        };
        match variable {
            // A missing parameter cannot happen once the schema has checked that every path
            // captures it; an empty value is the harmless answer if it ever does.
            Variable::Param(name) => out.push_str(
                context
                    .params
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or("", |(_, v)| v.as_str()),
            ),
            Variable::Last => out.push_str(context.path.rsplit('/').next().unwrap_or("")),
            Variable::Query => out.push_str(context.query),
            Variable::Arg(name) => out.push_str(arg(context.query, name).unwrap_or("")),
            Variable::Header(name) => {
                // Non-UTF-8 header bytes are dropped rather than guessed at.
                let value = context
                    .headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                push_value(&mut out, value, place);
            }
            Variable::Resp { name, pointer } => {
                let value = answer(name)
                    .and_then(|body| body.pointer(pointer))
                    .ok_or_else(|| RenderError::MissingValue {
                        name: name.clone(),
                        pointer: pointer.clone(),
                    })?;
                match value {
                    Value::String(text) => push_value(&mut out, text, place),
                    Value::Null => {}
                    other => push_value(&mut out, &other.to_string(), place),
                }
            }
        }
    }
    Ok(out)
}

/// The raw value of the first query argument called `name`.
fn arg<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn push_value(out: &mut String, value: &str, place: Place) {
    match place {
        Place::Text => out.push_str(value),
        Place::Uri => percent_encode(out, value),
    }
}

/// Percent-encodes every byte but RFC 3986's unreserved characters.
fn percent_encode(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
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
}
