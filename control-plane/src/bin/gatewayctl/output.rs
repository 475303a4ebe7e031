//! How results are written: colour (only on a terminal, never with `NO_COLOR`), tables, times,
//! and documents as YAML or JSON with a stable order.

use std::io::IsTerminal;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::client::CtlError;
use crate::diff::Op;

/// Whether and how text is coloured.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    colour: bool,
}

impl Style {
    /// Colour when standard output is a terminal, `NO_COLOR` is unset (any value turns it
    /// off, as <https://no-color.org> says) and `--no-color` was not given.
    pub fn for_stdout(no_color_flag: bool) -> Style {
        let no_color_env = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            colour: !no_color_flag && !no_color_env && std::io::stdout().is_terminal(),
        }
    }

    /// No colour.
    #[cfg(test)]
    pub fn plain() -> Style {
        Style { colour: false }
    }

    /// `text` in the colour of `op`: green added, red removed, yellow changed.
    pub fn op(&self, op: Op, text: &str) -> String {
        let code = match op {
            Op::Add => "32",
            Op::Remove => "31",
            Op::Change => "33",
        };
        self.paint(code, text)
    }

    /// `text` in bold.
    pub fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// Lines of aligned columns under an upper-case header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut text = line(header.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        text.push_str(&line(row.clone()));
    }
    text
}

/// A unix time in seconds as UTC ISO 8601 (`2025-01-31T12:00:00Z`); `-` when absent.
pub fn time(value: &Value) -> String {
    match value.as_i64() {
        Some(seconds) => iso8601(seconds),
        None => "-".into(),
    }
}

fn iso8601(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// A JSON value as a table cell: strings bare, `null` as `-`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `value` with every map's keys in sorted order, whatever order they were built in.
pub fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(fields) => {
            let mut names: Vec<&String> = fields.keys().collect();
            names.sort();
            let mut out = Map::new();
            for name in names {
                out.insert(name.clone(), sorted(&fields[name]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// A mapping whose keys are written in the order given (collections in a fixed order), not
/// in the order a JSON map would sort them.
pub struct Ordered(pub Vec<(String, Value)>);

impl Serialize for Ordered {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// `document` as YAML.
pub fn yaml<T: Serialize>(document: &T) -> Result<String, CtlError> {
    yaml_serde::to_string(document).map_err(|e| CtlError::Input(format!("cannot write YAML: {e}")))
}

/// `document` as indented JSON, with a final newline.
pub fn json<T: Serialize>(document: &T) -> Result<String, CtlError> {
    serde_json::to_string_pretty(document)
        .map(|text| text + "\n")
        .map_err(|e| CtlError::Input(format!("cannot write JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unix_times_read_as_utc_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(time(&Value::Null), "-");
    }

    #[test]
    fn tables_align_their_columns() {
        let text = table(
            &["version", "message"],
            &[
                vec!["10".into(), "first".into()],
                vec!["9".into(), "-".into()],
            ],
        );
        assert_eq!(text, "VERSION  MESSAGE\n10       first\n9        -\n");
    }

    #[test]
    fn ordered_mappings_keep_their_order_in_yaml_and_json() {
        let document = Ordered(vec![
            ("upstreams".into(), json!([{"nodes": [], "id": "u"}])),
            ("routes".into(), json!([])),
        ]);
        let yaml = yaml(&document).unwrap();
        assert!(
            yaml.find("upstreams").unwrap() < yaml.find("routes").unwrap(),
            "{yaml}"
        );
        let json = json(&document).unwrap();
        assert!(
            json.find("upstreams").unwrap() < json.find("routes").unwrap(),
            "{json}"
        );
        assert_eq!(
            serde_json::to_string(&sorted(&json!({"b": 1, "a": {"d": 1, "c": 2}}))).unwrap(),
            r#"{"a":{"c":2,"d":1},"b":1}"#
        );
    }
}
