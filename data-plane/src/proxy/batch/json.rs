//! Whether an answer is one JSON document, without building anything.
//!
//! An answer no template reads is spliced into the merged document as the node sent it
//! ([`super::merge::Answer::Raw`]), so it must be JSON whatever its `Content-Type` says: one
//! node that lies (an HTML error page with `application/json`, a truncated body) would
//! otherwise make the whole merged answer unreadable. serde_json's `IgnoredAny` did the check
//! through its visitor machinery (callgrind, 3-way batch: ~1,000 instructions per 90-byte
//! answer); this is the same grammar as one loop over the bytes, at a fraction of that.
//!
//! It accepts exactly what `serde_json::from_str::<IgnoredAny>` accepts (unit tests compare the
//! two): RFC 8259's grammar with surrounding whitespace, any nesting (serde_json's skipping
//! has no recursion limit either), and a `\u` escape of a lone surrogate (an escape the
//! grammar allows, which serde_json checks only when it reads a string).

/// The one JSON value in `text` without its surrounding whitespace, or `None` if `text` is not
/// exactly one JSON document.
pub(super) fn document(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let start = skip_space(bytes, 0);
    let end = value(bytes, start)?;
    (skip_space(bytes, end) == bytes.len()).then(|| &text[start..end])
}

fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(at) {
        at += 1;
    }
    at
}

/// Where the value starting at `at` ends. Iterative, so that a deep document cannot exhaust
/// the stack.
fn value(bytes: &[u8], mut at: usize) -> Option<usize> {
    let mut nesting = Nesting::default();
    loop {
        // A value.
        match *bytes.get(at)? {
            open @ (b'{' | b'[') => {
                let object = open == b'{';
                at = skip_space(bytes, at + 1);
                let close = if object { b'}' } else { b']' };
                if bytes.get(at) == Some(&close) {
                    // Empty: a whole value, and what follows it is read below.
                    at += 1;
                } else {
                    nesting.push(object);
                    if object {
                        at = key(bytes, at)?;
                    }
                    continue;
                }
            }
            b'"' => at = string(bytes, at)?,
            b't' => at = literal(bytes, at, b"true")?,
            b'f' => at = literal(bytes, at, b"false")?,
            b'n' => at = literal(bytes, at, b"null")?,
            b'-' | b'0'..=b'9' => at = number(bytes, at)?,
            _ => return None,
        }
        // After a value: the end, or a separator or the close of the container it is in.
        loop {
            let Some(object) = nesting.top() else {
                return Some(at);
            };
            at = skip_space(bytes, at);
            match *bytes.get(at)? {
                b',' => {
                    at = skip_space(bytes, at + 1);
                    if object {
                        at = key(bytes, at)?;
                    }
                    break;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            nesting.pop();
            at += 1;
        }
    }
}

/// The open containers, innermost last: one bit each (1 for an object), 128 to a word, the
/// outer words spilled to a `Vec` that a document nested less than 129 deep never allocates.
#[derive(Default)]
struct Nesting {
    depth: usize,
    word: u128,
    spilled: Vec<u128>,
}

impl Nesting {
    fn push(&mut self, object: bool) {
        if self.depth > 0 && self.depth.is_multiple_of(128) {
            self.spilled.push(std::mem::take(&mut self.word));
        }
        self.word = (self.word << 1) | u128::from(object);
        self.depth += 1;
    }

    fn pop(&mut self) {
        self.depth -= 1;
        self.word >>= 1;
        if self.depth > 0 && self.depth.is_multiple_of(128) {
            self.word = self.spilled.pop().unwrap_or_default();
        }
    }

    /// Whether the innermost open container is an object; `None` at the top level.
    fn top(&self) -> Option<bool> {
        (self.depth > 0).then_some(self.word & 1 == 1)
    }
}

/// An object's key and its colon, from `at` (whitespace skipped); where its value may start.
fn key(bytes: &[u8], at: usize) -> Option<usize> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let at = skip_space(bytes, string(bytes, at)?);
    (bytes.get(at) == Some(&b':')).then(|| skip_space(bytes, at + 1))
}

/// The string whose opening quote is at `at`; where it ends. The text is UTF-8 already, so
/// only control characters and escapes are checked.
fn string(bytes: &[u8], mut at: usize) -> Option<usize> {
    at += 1;
    loop {
        // Eight bytes at a time to the first one that is not plain text.
        while let Some(word) = bytes
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
        {
            let stops = stops(u64::from_le_bytes(word));
            if stops != 0 {
                // The lowest flag is exact (the ones above it may be spurious).
                at += (stops.trailing_zeros() / 8) as usize;
                break;
            }
            at += 8;
        }
        match *bytes.get(at)? {
            b'"' => return Some(at + 1),
            b'\\' => {
                at += 1;
                match *bytes.get(at)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 1,
                    b'u' if bytes.get(at + 1..at + 5)?.iter().all(u8::is_ascii_hexdigit) => {
                        at += 5;
                    }
                    _ => return None,
                }
            }
            0..=0x1f => return None,
            _ => at += 1,
        }
    }
}

/// The high bit of each byte of `word` that may end a plain run of string text: a quote, a
/// backslash or a control character. The lowest one set marks the first such byte exactly.
fn stops(word: u64) -> u64 {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    zero(word ^ (ONES * u64::from(b'"')))
        | zero(word ^ (ONES * u64::from(b'\\')))
        | (word.wrapping_sub(ONES * 0x20) & !word & HIGH)
}

fn literal(bytes: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    let end = at + word.len();
    (bytes.get(at..end) == Some(word)).then_some(end)
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?` from `at`; where it ends.
fn number(bytes: &[u8], mut at: usize) -> Option<usize> {
    let digits = |at: usize| {
        let mut end = at;
        while bytes.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        (end > at).then_some(end)
    };
    if bytes.get(at) == Some(&b'-') {
        at += 1;
    }
    at = match *bytes.get(at)? {
        // A leading zero stands alone: `01` is not a number.
        b'0' => at + 1,
        _ => digits(at)?,
    };
    if bytes.get(at) == Some(&b'.') {
        at = digits(at + 1)?;
    }
    if let Some(b'e' | b'E') = bytes.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = bytes.get(at) {
            at += 1;
        }
        at = digits(at)?;
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::document;

    /// What serde_json says of `text`, in `document`'s terms.
    fn serde(text: &str) -> Option<&str> {
        serde_json::from_str::<serde::de::IgnoredAny>(text)
            .is_ok()
            .then(|| text.trim_matches([' ', '\t', '\n', '\r']))
    }

    #[test]
    fn agrees_with_serde_json() {
        let cases = [
            "",
            " ",
            "{}",
            "[]",
            " {} ",
            "\r\n[ ]\t",
            "{\"a\":1}",
            "{\"a\" : [1, 2.5e-3, -0, true, false, null]}",
            "\"\"",
            "\"\\u00e9\\ud800\\n\\/\"",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12g4\"",
            "\"a\u{1}\"",
            "\"é ☃\"",
            "0",
            "-",
            "-0",
            "01",
            "-01",
            "1.",
            "1.5",
            ".5",
            "1e",
            "1e+",
            "1E-7",
            "1e5x",
            "tru",
            "true",
            "truex",
            "nul",
            "null null",
            "{\"a\"}",
            "{\"a\":}",
            "{,}",
            "[,]",
            "[1,]",
            "{\"a\":1,}",
            "[1 2]",
            "{\"a\":1 \"b\":2}",
            "{1:2}",
            "[\"a\":1]",
            "{\"a\":[}",
            "[{]}",
            "[[[]]]",
            "[[]",
            "[]]",
            "{}}",
            "\"unterminated",
            "{\"a\":{\"b\":{\"c\":[{}]}}}",
            "[true,false,null,\"x\",{\"k\":[]}]",
            " 7 ",
            "7 8",
            "+1",
            "Infinity",
            "NaN",
            "[-]",
            "{\"a\":-}",
            "\u{feff}{}",
            "{\"a\"\n:\n1\n}",
            "{\"\\ud800\":1}",
            "{\"\\udc00\":1}",
            "{\"\\ud83d\\ude00\":1}",
            "{\"\\ud83d\\u0041\":1}",
            "{\"\\ud83d\\n\":1}",
            "{\"\\ud83d\":1}",
            "[\"\\ud83d\\u0041\"]",
            "{\"\\ud83d\\ud83d\\ude00\":1}",
        ];
        for text in cases {
            assert_eq!(document(text), serde(text), "{text:?}");
        }
    }

    #[test]
    fn a_stop_at_any_offset_of_a_long_string_is_seen() {
        for length in 0..24 {
            for stop in [
                "\"", "\\n", "\\u00e9", "\u{1}", "\u{1f}", "\\x", "\u{7f}", "é", " ",
            ] {
                for at in 0..=length {
                    let text: String = (0..length)
                        .map(|i| if i == at { stop } else { "a" })
                        .collect();
                    let text = format!("[\"{text}\"]");
                    assert_eq!(document(&text), serde(&text), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn any_nesting_is_read_as_serde_json_reads_it() {
        for depth in [1, 127, 128, 129, 255, 256, 257, 1000] {
            for (open, close) in [("[", "]"), ("{\"k\":", "}")] {
                let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                assert_eq!(document(&text), serde(&text), "{depth} {open}");
                // One close short, one too many; below, mixed kinds across the words' edges.
                let short = &text[..text.len() - 1];
                assert_eq!(document(short), serde(short), "{depth} {open} short");
                let long = format!("{text}{close}");
                assert_eq!(document(&long), serde(&long), "{depth} {open} long");
            }
            let mixed = format!("{}1{}", "[{\"k\":".repeat(depth), "}]".repeat(depth));
            assert_eq!(document(&mixed), serde(&mixed), "{depth} mixed");
            let crossed = format!("{}1{}", "[{\"k\":".repeat(depth), "]}".repeat(depth));
            assert_eq!(document(&crossed), serde(&crossed), "{depth} crossed");
        }
    }

    #[test]
    fn agrees_with_serde_json_on_every_cut_and_one_byte_change() {
        // Every prefix of valid documents, and each with one byte replaced by each of a few
        // structural bytes: the truncated or corrupted answers a lying node sends.
        let documents = [
            r#"{"service":"catalog","item":"14286","uri":"/catalog","price":19.99,"stock":true}"#,
            r#"[{"a":[1,-2.5E+3,{"b":null}],"c":"\"q\\u0041"},[],{},false,0]"#,
        ];
        let replacements = [
            b'{', b'}', b'[', b']', b'"', b',', b':', b'\\', b' ', b'0', b'e', b'-', b'.', b'x',
        ];
        for document_text in documents {
            for cut in 0..=document_text.len() {
                let text = &document_text[..cut];
                assert_eq!(document(text), serde(text), "{text:?}");
            }
            for at in 0..document_text.len() {
                for &byte in &replacements {
                    let mut bytes = document_text.as_bytes().to_vec();
                    bytes[at] = byte;
                    let text = String::from_utf8(bytes).expect("ASCII");
                    assert_eq!(document(&text), serde(&text), "{text:?}");
                }
            }
        }
    }
}
