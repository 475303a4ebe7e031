//! Small request helpers shared by plugins.

use std::borrow::Cow;

use http::Uri;
use http::header::{COOKIE, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;

/// Percent-decodes a query component (`+` is a space, as in forms). A component with nothing
/// to decode is borrowed; an invalid escape is kept as it is; bytes that are not UTF-8 become
/// U+FFFD.
pub fn percent_decode(text: &str) -> Cow<'_, str> {
    match crate::transport::query::decode(text) {
        // Nothing was decoded: the text itself, already UTF-8.
        Cow::Borrowed(_) => Cow::Borrowed(text),
        Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

/// The first value of query argument `name` in `uri`, decoded.
pub fn query_arg(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value).into_owned())
    })
}

/// `uri` without query argument `name`.
pub fn without_query_arg(uri: &Uri, name: &str) -> Uri {
    let Some(query) = uri.query() else {
        return uri.clone();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| percent_decode(pair.split_once('=').map_or(*pair, |(k, _)| k)) != name)
        .collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = PathAndQuery::try_from(path_and_query).ok();
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// Removes cookie `name` from every `Cookie` header of `headers`; a header left empty goes.
pub fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let named = |pair: &str| pair.trim().split_once('=').map_or(pair.trim(), |(n, _)| n) == name;
    let values: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| {
            let Ok(text) = value.to_str() else {
                return Some(value.clone());
            };
            let kept: Vec<&str> = text
                .split(';')
                .filter(|pair| !named(pair))
                .map(str::trim)
                .collect();
            // Only bytes of a valid value remain, so this parses; an empty one is dropped.
            (!kept.is_empty())
                .then(|| HeaderValue::from_str(&kept.join("; ")).ok())
                .flatten()
        })
        .collect();
    headers.remove(COOKIE);
    for value in values {
        headers.append(COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_arguments_are_found_decoded_and_removed() {
        let uri: Uri = "/p?a=1&apikey=k%20y+z&b".parse().unwrap();
        assert_eq!(query_arg(&uri, "apikey").as_deref(), Some("k y z"));
        assert_eq!(query_arg(&uri, "b").as_deref(), Some(""));
        assert_eq!(query_arg(&uri, "c"), None);
        assert_eq!(without_query_arg(&uri, "apikey").to_string(), "/p?a=1&b");
        let only: Uri = "/p?apikey=x".parse().unwrap();
        assert_eq!(without_query_arg(&only, "apikey").to_string(), "/p");
        for odd in ["%", "%4", "%zz", "a%", "%%%"] {
            let _ = percent_decode(odd);
        }
        assert_eq!(percent_decode("%41%zz%"), "A%zz%");
        // Escapes next to multi-byte characters: bytes, never a slice inside a character.
        assert_eq!(percent_decode("%aé"), "%aé");
        assert_eq!(percent_decode("é%C3%A9+"), "éé ");
    }

    #[test]
    fn a_cookie_is_removed_by_name_and_the_others_kept() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; jwt=t.o.k; b=2"));
        headers.append(COOKIE, HeaderValue::from_static("jwt=x"));
        headers.append(COOKIE, HeaderValue::from_static("jwtx=3"));
        remove_cookie(&mut headers, "jwt");
        let left: Vec<_> = headers.get_all(COOKIE).iter().collect();
        assert_eq!(left, ["a=1; b=2", "jwtx=3"]);
    }
}
