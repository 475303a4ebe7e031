//! `Cache-Control` read the way a shared cache must (RFC 9111 §5.2): the directives of every
//! `Cache-Control` field line of a message, by name, case-insensitively, with their arguments.
//! A directive the cache does not know is ignored; a malformed argument makes the directive
//! count as present with no usable number, which only ever makes the cache store less.

use http::HeaderMap;
use http::header::CACHE_CONTROL;

/// The directives of one message that a shared cache acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-store`: neither stored nor answered from the cache.
    pub no_store: bool,
    /// `no-cache` (with or without field names): never answered without revalidation, which
    /// this cache does not do: an answer is not stored, a request skips the stored entry.
    pub no_cache: bool,
    /// `private` (with or without field names): not for a shared cache.
    pub private: bool,
    /// `public`: storable even for a request with `Authorization`.
    pub public: bool,
    /// `must-revalidate` / `proxy-revalidate`: storable for a request with `Authorization`.
    pub must_revalidate: bool,
    /// `max-age=N` (seconds); `Some(0)` when its argument is not a number.
    pub max_age: Option<u64>,
    /// `s-maxage=N` (seconds), the shared cache's own lifetime; `Some(0)` when malformed.
    pub s_maxage: Option<u64>,
}

impl Directives {
    /// The directives of every `Cache-Control` line of `headers`.
    pub fn of(headers: &HeaderMap) -> Directives {
        let mut directives = Directives::default();
        for line in headers.get_all(CACHE_CONTROL) {
            // Not visible ASCII: no directive can be read from it, so none is.
            let Ok(line) = line.to_str() else {
                continue;
            };
            for directive in split(line) {
                directives.add(directive);
            }
        }
        directives
    }

    fn add(&mut self, directive: &str) {
        let (name, argument) = match directive.split_once('=') {
            Some((name, argument)) => (name.trim(), Some(unquote(argument.trim()))),
            None => (directive.trim(), None),
        };
        let seconds = || {
            // RFC 9111 §1.2.2: a delta-seconds too large to hold is the largest one held.
            argument.map(|a| match a.parse::<u64>() {
                Ok(n) => n,
                Err(_) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) => u64::MAX,
                Err(_) => 0,
            })
        };
        match name.to_ascii_lowercase().as_str() {
            "no-store" => self.no_store = true,
            "no-cache" => self.no_cache = true,
            "private" => self.private = true,
            "public" => self.public = true,
            "must-revalidate" | "proxy-revalidate" => self.must_revalidate = true,
            // A directive named twice is invalid (§4.2.1): the smaller lifetime is the safe one.
            "max-age" => self.max_age = min(self.max_age, seconds().unwrap_or(0)),
            "s-maxage" => self.s_maxage = min(self.s_maxage, seconds().unwrap_or(0)),
            _ => {}
        }
    }

    /// How long an answer with these directives may be served by a shared cache, if they say
    /// (`s-maxage` first, then `max-age`).
    pub fn lifetime(&self) -> Option<u64> {
        self.s_maxage.or(self.max_age)
    }
}

fn min(current: Option<u64>, new: u64) -> Option<u64> {
    Some(current.map_or(new, |c| c.min(new)))
}

/// The directives of one line, split at commas outside quoted strings.
fn split(line: &str) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    let mut pieces = Vec::new();
    for (i, byte) in line.bytes().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                pieces.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&line[start..]);
    pieces.into_iter().filter(|p| !p.trim().is_empty())
}

/// A quoted-string's text (escapes are irrelevant to the arguments read here), or `text`.
fn unquote(text: &str) -> &str {
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn parse(lines: &[&str]) -> Directives {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(CACHE_CONTROL, HeaderValue::from_str(line).unwrap());
        }
        Directives::of(&headers)
    }

    #[test]
    fn directives_are_read_from_every_line_by_name_regardless_of_case() {
        let cases: &[(&[&str], Directives)] = &[
            (&[], Directives::default()),
            (
                &["no-store"],
                Directives {
                    no_store: true,
                    ..Directives::default()
                },
            ),
            (
                &["Public, Max-Age=60", "S-MAXAGE=\"120\""],
                Directives {
                    public: true,
                    max_age: Some(60),
                    s_maxage: Some(120),
                    ..Directives::default()
                },
            ),
            (
                &["private=\"set-cookie, x-user\", no-cache=\"a,b\""],
                Directives {
                    private: true,
                    no_cache: true,
                    ..Directives::default()
                },
            ),
            (
                &["max-age=abc, must-revalidate"],
                Directives {
                    max_age: Some(0),
                    must_revalidate: true,
                    ..Directives::default()
                },
            ),
            (
                &["max-age=300", "max-age=10"],
                Directives {
                    max_age: Some(10),
                    ..Directives::default()
                },
            ),
            (
                &["max-age=99999999999999999999999"],
                Directives {
                    max_age: Some(u64::MAX),
                    ..Directives::default()
                },
            ),
            (
                &[" , ,unknown=1, proxy-revalidate ,"],
                Directives {
                    must_revalidate: true,
                    ..Directives::default()
                },
            ),
        ];
        for (lines, expected) in cases {
            assert_eq!(parse(lines), *expected, "{lines:?}");
        }
    }

    #[test]
    fn the_shared_lifetime_prefers_s_maxage() {
        assert_eq!(parse(&["max-age=10, s-maxage=20"]).lifetime(), Some(20));
        assert_eq!(parse(&["max-age=10"]).lifetime(), Some(10));
        assert_eq!(parse(&["public"]).lifetime(), None);
    }

    #[test]
    fn a_line_that_is_not_text_says_nothing() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_bytes(b"no-store\xff").unwrap(),
        );
        assert_eq!(Directives::of(&headers), Directives::default());
    }
}
