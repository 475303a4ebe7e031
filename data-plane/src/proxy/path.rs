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

/// The normalised form of `path`: `Ok(None)` when it is already normal (the common case costs
/// one scan and no allocation), `Err` for a path no normal form is safe for. Only origin-form
/// paths (starting with `/`) are touched.
///
/// Refused, as nginx refuses them: a `%` not followed by two hex digits (decoding once more
/// could otherwise make an escape, `%%32%65` → `%2e`, that a node decodes into a dot
/// segment), and a dot segment with a `;` parameter (`..;`), which Tomcat resolves as `..`.
pub fn normalize(path: &str) -> Result<Option<String>, &'static str> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') || !needs_work(bytes) {
        return Ok(None);
    }
    let decoded = decode_unreserved(bytes)?;
    // Only ASCII was decoded from ASCII escapes, so this is still the client's UTF-8.
    let decoded = std::str::from_utf8(&decoded).map_err(|_| "not UTF-8")?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        match segment {
            "." => {}
            ".." => {
                segments.pop();
            }
            _ if segment.starts_with(".;") || segment.starts_with("..;") => {
                return Err("a dot segment with parameters");
            }
            _ => segments.push(segment),
        }
    }
    // A path that ended in a directory (`/a/`, `/a/.`, `/a/..`) still does.
    let ends_in_directory = matches!(decoded.rsplit('/').next(), Some("" | "." | ".."));
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || ends_in_directory {
        out.push('/');
    }
    Ok((out != path).then_some(out))
}

/// Whether `path` has anything normalising could change: a `%`, a `//`, or a segment that
/// starts with `.`. A false positive only costs the slow path.
///
/// Eight bytes at a time: every proxied request pays for this scan, and a byte loop (or a
/// `memchr` for `%` beside a pair scan) was 90–110 instructions for `/catalog` (callgrind).
fn needs_work(path: &[u8]) -> bool {
    let mut chunks = path.chunks_exact(8);
    // 0x80 when the previous chunk ended in `/`: the high bit of this chunk's first byte.
    let mut carry = 0u64;
    for chunk in &mut chunks {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            continue;
        };
        let word = u64::from_le_bytes(bytes);
        let slash = bytes_equal(word, b'/');
        let after_slash = (slash << 8) | carry;
        if bytes_equal(word, b'%') != 0 || after_slash & (slash | bytes_equal(word, b'.')) != 0 {
            return true;
        }
        carry = slash >> 56;
    }
    let mut after_slash = carry != 0;
    for &byte in chunks.remainder() {
        if byte == b'%' || (after_slash && (byte == b'/' || byte == b'.')) {
            return true;
        }
        after_slash = byte == b'/';
    }
    false
}

/// The high bit of each byte of `word` that equals `byte`, exactly (no false positives: the
/// sum below never carries from one byte into the next).
fn bytes_equal(word: u64, byte: u8) -> u64 {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let diff = word ^ (LOW * u64::from(byte));
    !(((diff & !HIGH) + !HIGH) | diff) & HIGH
}

/// `path` with the `%XX` escapes of unreserved characters decoded; `Err` for a `%` without
/// two hex digits.
fn decode_unreserved(path: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] != b'%' {
            out.push(path[i]);
            i += 1;
            continue;
        }
        let mut decoded = [0u8];
        let digits = path.get(i + 1..i + 3).unwrap_or_default();
        if hex::decode_to_slice(digits, &mut decoded).is_err() {
            return Err("a % without two hex digits");
        }
        let [byte] = decoded;
        if is_unreserved(byte) {
            out.push(byte);
        } else {
            out.extend_from_slice(&path[i..i + 3]);
        }
        i += 3;
    }
    Ok(out)
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
            "/a;b/c",
            "*",
        ] {
            assert_eq!(normalize(path), Ok(None), "{path}");
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
            ("/.%2e/x", "/x"),
        ] {
            assert_eq!(normalize(raw), Ok(Some(normal.to_owned())), "{raw}");
        }
    }

    #[test]
    fn a_trailing_slash_survives_normalising() {
        for (raw, normal) in [
            ("/a//", "/a/"),
            ("//admin/", "/admin/"),
            ("/%61/", "/a/"),
            ("/docs/./x/", "/docs/x/"),
        ] {
            assert_eq!(normalize(raw), Ok(Some(normal.to_owned())), "{raw}");
        }
    }

    #[test]
    fn reserved_escapes_stay_as_sent() {
        assert_eq!(normalize("/a%2F..%2Fb"), Ok(None), "%2F is no separator");
        assert_eq!(normalize("/a/%2f/../b"), Ok(Some("/a/b".to_owned())));
        assert_eq!(normalize("/%61%2f"), Ok(Some("/a%2f".to_owned())));
        assert_eq!(normalize("/%C3%A9"), Ok(None));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for path in [
            "/public/%%32%65%%32%65/admin/users",
            "/a%zz",
            "/a/%",
            "/a/%4",
            "/%+9",
            "/public/..;/admin/users",
            "/public/.;x/admin",
        ] {
            assert!(normalize(path).is_err(), "{path}");
        }
    }

    #[test]
    fn the_word_wise_scan_agrees_with_a_byte_wise_one() {
        let naive = |path: &[u8]| {
            path.contains(&b'%')
                || path
                    .windows(2)
                    .any(|pair| pair[0] == b'/' && matches!(pair[1], b'/' | b'.'))
        };
        let alphabet = [b'/', b'.', b'%', b'a', 0x2f ^ 0x80, 0xae, 0xff, 0];
        // Every string of up to 4 bytes, and each of them placed at every offset of a
        // 20-byte path of `x`s: chunk boundaries fall everywhere.
        let mut strings: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..4 {
            let longer: Vec<Vec<u8>> = strings
                .iter()
                .flat_map(|s| alphabet.iter().map(move |&b| [s.as_slice(), &[b]].concat()))
                .collect();
            strings.extend(longer);
        }
        for string in &strings {
            for offset in 0..=(20 - string.len().min(20)) {
                let mut path = vec![b'x'; 20];
                path.splice(offset..offset + string.len(), string.iter().copied());
                for end in [path.len(), 8, 9, 16, 17] {
                    let path = &path[..end.min(path.len())];
                    assert_eq!(super::needs_work(path), naive(path), "{path:?}");
                }
            }
        }
    }

    #[test]
    fn normalising_twice_changes_nothing_more() {
        let parts = [
            "/", "//", ".", "..", "%2e", "%2E", "%61", "%2F", "a", "%7e", "/.",
        ];
        // Every path of up to four parts.
        let mut paths = vec![String::new()];
        for _ in 0..4 {
            paths = paths
                .iter()
                .flat_map(|p| parts.iter().map(move |part| format!("{p}{part}")))
                .collect();
            for path in &paths {
                let path = format!("/{path}");
                if let Ok(Some(once)) = normalize(&path) {
                    assert_eq!(normalize(&once), Ok(None), "{path} → {once}");
                    assert!(
                        !once.to_ascii_lowercase().contains("%2e"),
                        "{path} → {once}"
                    );
                }
            }
        }
    }
}
