//! Redaction must never let a secret, or an encoding of it, through, however the text is split
//! into chunks.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use cadenza_crypto::{MIN_REDACTED_LEN, Redactor};
use proptest::prelude::*;
use secrecy::SecretString;

/// Encodings computed here independently of the crate, as the programs in a workspace would.
fn encodings(value: &str) -> Vec<String> {
    let bytes = value.as_bytes();
    let percent: String = bytes
        .iter()
        .map(|&byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect();
    let json = serde_json::to_string(value).unwrap();
    let spaced_hex: Vec<String> = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    vec![
        value.to_owned(),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
        hex::encode(bytes),
        hex::encode_upper(bytes),
        spaced_hex.join(" "),
        percent,
        json[1..json.len() - 1].to_owned(),
    ]
}

/// What `od -An -tx1` prints for these bytes (GNU coreutils): 16 bytes a line, each as " xx".
fn od(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|byte| format!(" {byte:02x}"))
                .collect::<String>()
                + "\n"
        })
        .collect()
}

fn name(index: usize) -> String {
    format!("S{index}")
}

fn redactor(secrets: &[String]) -> Redactor {
    Redactor::new(
        secrets
            .iter()
            .enumerate()
            .map(|(index, value)| (name(index), SecretString::from(value.as_str()))),
    )
}

/// Secrets that a redactor covers, and whose encodings cannot hide inside a replacement
/// (`[REDACTED:S0]`): no brackets, and not a piece of the replacement text.
fn secret() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9_+/=:@%. -]{4,32}", "[^\\[\\]]{4,16}",]
        .prop_filter("too short to be redacted", |value| {
            value.trim().len() >= MIN_REDACTED_LEN
        })
        .prop_filter("part of a replacement", |value| {
            encodings(value)
                .iter()
                .all(|form| !"[REDACTED:S0123456789]".contains(form.as_str()))
        })
}

fn stream_redact(redactor: &Redactor, chunks: &[&str]) -> String {
    let mut stream = redactor.stream();
    let mut output: String = chunks.iter().map(|chunk| stream.push(chunk)).collect();
    output.push_str(&stream.finish());
    output
}

/// Splits `text` at the given fractions of its length, moved to character boundaries.
fn chunks_at<'a>(text: &'a str, cuts: &[f64]) -> Vec<&'a str> {
    let mut positions: Vec<usize> = cuts
        .iter()
        .map(|cut| {
            let mut position = (cut * text.len() as f64) as usize;
            while !text.is_char_boundary(position) {
                position -= 1;
            }
            position
        })
        .collect();
    positions.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for position in positions.into_iter().chain([text.len()]) {
        chunks.push(&text[start..position]);
        start = position;
    }
    chunks
}

fn assert_nothing_leaks(output: &str, secrets: &[String]) -> Result<(), TestCaseError> {
    for secret in secrets {
        for form in encodings(secret) {
            prop_assert!(
                !output.contains(&form),
                "{form:?} of {secret:?} leaked in {output:?}"
            );
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn a_secret_split_at_any_boundary_never_leaks(
        value in secret(),
        form in 0..10_usize,
        before in ".{0,12}",
        after in ".{0,12}",
    ) {
        let redactor = redactor(std::slice::from_ref(&value));
        let text = format!("{before}{}{after}", encodings(&value)[form]);
        let whole = redactor.redact(&text).into_owned();
        assert_nothing_leaks(&whole, std::slice::from_ref(&value))?;
        for (split, _) in text.char_indices().skip(1) {
            let streamed = stream_redact(&redactor, &[&text[..split], &text[split..]]);
            prop_assert_eq!(&streamed, &whole, "split at byte {}", split);
        }
    }

    #[test]
    fn randomly_chunked_text_redacts_like_the_whole_text(
        secrets in prop::collection::vec(secret(), 1..4),
        pieces in prop::collection::vec((any::<prop::sample::Index>(), 0..11_usize, ".{0,8}"), 1..8),
        cuts in prop::collection::vec(0.0..1.0_f64, 0..12),
    ) {
        // Text of fillers and secrets in any of their encodings (index 10: filler only).
        let mut text = String::new();
        for (which, form, filler) in &pieces {
            text.push_str(filler);
            if *form < 10 {
                text.push_str(&encodings(which.get(&secrets).as_str())[*form]);
            }
        }
        let redactor = redactor(&secrets);
        let whole = redactor.redact(&text).into_owned();
        assert_nothing_leaks(&whole, &secrets)?;
        let streamed = stream_redact(&redactor, &chunks_at(&text, &cuts));
        prop_assert_eq!(streamed, whole);
    }

    #[test]
    fn a_secret_in_od_output_is_redacted_at_every_column(
        value in "[a-zA-Z0-9_+/=:@%. -]{4,40}",
        before in prop::collection::vec(any::<u8>(), 0..40),
        after in prop::collection::vec(any::<u8>(), 0..20),
        cuts in prop::collection::vec(0.0..1.0_f64, 0..6),
    ) {
        prop_assume!(value.trim().len() >= MIN_REDACTED_LEN);
        let input = [before.as_slice(), value.as_bytes(), after.as_slice()].concat();
        let dump = od(&input);
        let redactor = redactor(std::slice::from_ref(&value));
        let redacted = redactor.redact(&dump).into_owned();
        prop_assert_ne!(&redacted, &dump);
        // Read the bytes back the way a person would, across line breaks: the secret is gone.
        let mut runs: Vec<Vec<u8>> = vec![Vec::new()];
        for token in redacted.split_whitespace() {
            match u8::from_str_radix(token, 16) {
                Ok(byte) if token.len() == 2 => runs.last_mut().unwrap().push(byte),
                _ => runs.push(Vec::new()),
            }
        }
        for run in runs {
            prop_assert!(!run.windows(value.len()).any(|window| window == value.as_bytes()));
        }
        prop_assert_eq!(stream_redact(&redactor, &chunks_at(&dump, &cuts)), redacted);
    }
}
