//! The request path the router matches and the upstream receives, normalised.
//!
//! Why: routes are matched segment by segment, and auth plugins are configured per route. If
//! the router matched the raw path while the node normalised it, `/public/../admin/users`,
//! `/%61dmin/users` and `//admin/users` would reach a plugin-less `/*` route and then be served
//! by the node as `/admin/users`, past the `key-auth` of `/admin/*`. So the path is normalised
//! once, before routing, and the normalised path is what goes upstream: router and node see
//! the same segments (as Envoy's `normalize_path` + `merge_slashes`; APISIX routes on nginx's
//! normalised `$uri`).
//!
//! The steps, in RFC 3986 §6.2.2's order:
//! 1. `%XX` that encodes an unreserved character (`A–Z a–z 0–9 - . _ ~`) is decoded; any other
//!    `%XX` (`%2F`, `%20`, …) stays as it came, so an encoded `/` is part of its segment.
//! 2. Runs of `/` become one `/` (nginx's `merge_slashes`).
//! 3. `.` and `..` segments are resolved (RFC 3986 §5.2.4); `..` never climbs above `/`.

/// The normalised form of `path`, or `None` when it is already normal (the common case costs
/// one scan and no allocation). Only origin-form paths (starting with `/`) are touched.
pub fn normalize(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') || !needs_work(bytes) {
        return None;
    }
    let decoded = decode_unreserved(bytes);
    let mut out = String::with_capacity(decoded.len());
    // Segments between slashes; empty ones (from `//`) vanish.
    let mut segments: Vec<&str> = Vec::new();
    let decoded = std::str::from_utf8(&decoded).ok()?;
    let mut ends_with_slash = decoded.ends_with('/');
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        ends_with_slash = false;
        match segment {
            "." => ends_with_slash = true,
            ".." => {
                segments.pop();
                ends_with_slash = true;
            }
            _ => segments.push(segment),
        }
    }
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || ends_with_slash {
        out.push('/');
    }
    (out != path).then_some(out)
}

/// Whether `path` has anything step 1–3 could change: a `%`, a `//`, or a segment that starts
/// with `.`. A false positive only costs the slow path.
fn needs_work(path: &[u8]) -> bool {
    path.windows(2)
        .any(|pair| pair[0] == b'/' && (pair[1] == b'/' || pair[1] == b'.'))
        || path.contains(&b'%')
}

/// `path` with the `%XX` escapes of unreserved characters decoded.
fn decode_unreserved(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%'
            && let Some(byte) = path
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            && is_unreserved(byte)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(path[i]);
        i += 1;
    }
    out
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normal_paths_are_left_alone() {
        for path in [
            "/",
            "/catalog",
            "/a/b/",
            "/users/42",
            "/a%2Fb",
            "/a%20b",
            "/file.json",
            "/a/.well",
            "*",
        ] {
            assert_eq!(normalize(path), None, "{path}");
        }
    }

    #[test]
    fn spellings_of_one_path_become_that_path() {
        for (raw, normal) in [
            ("/public/../admin/users", "/admin/users"),
            ("/static/%2e%2e/admin/users", "/admin/users"),
            ("/static/%2E%2E/admin/users", "/admin/users"),
            ("/%61dmin/users", "/admin/users"),
            ("//admin/users", "/admin/users"),
            ("/admin//users", "/admin/users"),
            ("/admin/./users", "/admin/users"),
            ("/./admin/users", "/admin/users"),
            ("/admin/users/.", "/admin/users/"),
            ("/admin/x/..", "/admin/"),
            ("/../../admin", "/admin"),
            ("/..", "/"),
            ("//", "/"),
            ("/a%7e", "/a~"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Some(normal), "{raw}");
        }
    }

    #[test]
    fn reserved_and_broken_escapes_stay_as_sent() {
        assert_eq!(normalize("/a%2F..%2Fb"), None, "%2F is no separator");
        assert_eq!(normalize("/a/%2f/../b").as_deref(), Some("/a/b"));
        assert_eq!(normalize("/a%zz/%"), None);
        assert_eq!(normalize("/a/%4").as_deref(), None);
        assert_eq!(normalize("/%61%zz").as_deref(), Some("/a%zz"));
    }

    #[test]
    fn adversarial_paths_do_not_panic() {
        for path in [
            "/%",
            "/%%",
            "/%f",
            "/%ff",
            "/%c3%a9",
            "/\u{e9}/..",
            "/.%2e/",
            "/%2e.",
        ] {
            let _ = normalize(path);
        }
        assert_eq!(normalize("/.%2e/x").as_deref(), Some("/x"));
    }
}
