use super::*;

const TRACEPARENT_VALUE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn a_valid_traceparent_is_parsed() {
    let parsed = parse_traceparent(TRACEPARENT_VALUE.as_bytes()).expect("valid");
    assert_eq!(
        parsed.trace_id,
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
    );
    assert_eq!(
        parsed.parent_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap()
    );
    assert!(parsed.flags.is_sampled());
    let unsampled =
        parse_traceparent(format!("{}00", &TRACEPARENT_VALUE[..53]).as_bytes()).expect("valid");
    assert!(!unsampled.flags.is_sampled());
    // A later version may append fields after a dash; its first four read as version 00's.
    let later = format!("cc-{}-what-the-future-says", &TRACEPARENT_VALUE[3..]);
    assert_eq!(
        parse_traceparent(later.as_bytes()).map(|p| p.trace_id),
        Some(parsed.trace_id)
    );
    assert!(parse_traceparent(format!("cc-{}", &TRACEPARENT_VALUE[3..]).as_bytes()).is_some());
}

#[test]
fn malformed_traceparents_are_ignored() {
    let valid = TRACEPARENT_VALUE;
    let cases = [
        String::new(),
        "garbage".to_owned(),
        valid[..54].to_owned(),
        format!("{valid}-"),
        format!("{valid}0"),
        valid.replace("00-4bf", "ff-4bf"),
        valid.to_uppercase(),
        valid.replace('-', "_"),
        valid.replace(
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00000000000000000000000000000000",
        ),
        valid.replace("00f067aa0ba902b7", "0000000000000000"),
        valid.replace("4bf9", "4bg9"),
        valid.replace("-01", "-0x"),
        format!("cc-{}x", &valid[3..]),
        format!(" {valid}"),
    ];
    for case in &cases {
        assert_eq!(parse_traceparent(case.as_bytes()), None, "{case:?}");
    }
}

#[test]
fn no_bytes_panic_the_parser() {
    // Every length around the field boundaries, with every kind of byte in every position.
    let mut rng = fastrand::Rng::with_seed(26);
    let alphabet = b"0123456789abcdefABCDEF-_ \xff\x00";
    for length in 0..80 {
        for _ in 0..200 {
            let value: Vec<u8> = (0..length)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let _ = parse_traceparent(&value);
        }
    }
    // And each single-byte change of a valid value.
    for at in 0..TRACEPARENT_VALUE.len() {
        for byte in 0..=255u8 {
            let mut value = TRACEPARENT_VALUE.as_bytes().to_vec();
            value[at] = byte;
            let _ = parse_traceparent(&value);
        }
    }
}

#[test]
fn a_formatted_traceparent_parses_back() {
    let trace_id = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
    let span_id = SpanId::from_hex("b7ad6b7169203331").unwrap();
    let sampled = format_traceparent(trace_id, span_id, true);
    assert_eq!(
        sampled.to_str().unwrap(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    let unsampled = format_traceparent(trace_id, span_id, false);
    assert_eq!(
        unsampled.to_str().unwrap(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    );
    for value in [sampled, unsampled] {
        let parsed = parse_traceparent(value.as_bytes()).expect("parses");
        assert_eq!((parsed.trace_id, parsed.parent_id), (trace_id, span_id));
    }
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..1000 {
        let (trace, span) = (rng.u128(1..), rng.u64(1..));
        let value = format_traceparent(TraceId::from(trace), SpanId::from(span), rng.bool());
        let parsed = parse_traceparent(value.as_bytes()).expect("parses");
        assert_eq!(parsed.trace_id, TraceId::from(trace));
        assert_eq!(parsed.parent_id, SpanId::from(span));
    }
}

#[test]
fn settings_come_from_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    };
    assert_eq!(Settings::from_lookup("svc", env(&[])).unwrap(), None);
    assert_eq!(
        Settings::from_lookup("svc", env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])).unwrap(),
        None
    );
    let on = Settings::from_lookup(
        "svc",
        env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(on.endpoint, "http://127.0.0.1:4317");
    assert_eq!(on.service_name, "svc");
    assert_eq!(on.ratio, 1.0);
    assert!(!on.queue_size_set);
    let named = Settings::from_lookup(
        "svc",
        env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_SERVICE_NAME", "edge"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(named.service_name, "edge");
    assert_eq!(named.ratio, 0.25);
    assert!(named.queue_size_set);
    for bad in ["1.5", "-0.1", "half", "NaN"] {
        let pairs: &'static [(&'static str, &'static str)] = Box::leak(Box::new([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_TRACES_SAMPLER_ARG", bad),
        ]));
        assert!(
            matches!(
                Settings::from_lookup("svc", env(pairs)),
                Err(SetupError::Ratio(_))
            ),
            "{bad}"
        );
    }
}
