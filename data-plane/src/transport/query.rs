//! Query components, decoded the way forms encode them.

use std::borrow::Cow;

/// Percent-decodes a query component, `+` being a space (as in forms). A component with
/// nothing to decode is borrowed; an invalid escape is kept as it is.
pub fn decode(text: &str) -> Cow<'_, [u8]> {
    // Most components have nothing to decode: one scan, no copy (the key-auth route reads
    // three per request).
    if !text.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(text.as_bytes());
    }
    if !text.contains('+') {
        return percent_encoding::percent_decode_str(text).into();
    }
    let spaced = text.replace('+', " ");
    Cow::Owned(percent_encoding::percent_decode_str(&spaced).collect())
}
