//! The text forms in which a secret value is looked for.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use zeroize::Zeroizing;

/// `od` prints this many bytes per line.
const OD_BYTES_PER_LINE: usize = 16;

/// Bytes that stay literal, besides ASCII letters and digits, in the percent-encoding variants
/// that common libraries produce, and whether they write a space as `+`.
const PERCENT_ENCODING_STYLES: &[(&[u8], bool)] = &[
    // RFC 3986 unreserved: Rust `urlencoding`, Python `quote(safe='')`, Go `url.PathEscape`.
    (b"-._~", false),
    // Python `quote()` with its default `safe='/'`.
    (b"-._~/", false),
    // JavaScript `encodeURIComponent`.
    (b"-_.!~*'()", false),
    // JavaScript `encodeURI`.
    (b"-_.!~*'();,/?:@&=+$#", false),
    // HTML forms and `URLSearchParams` (application/x-www-form-urlencoded, WHATWG).
    (b"*-._", true),
    // Python `quote_plus`, Go `url.QueryEscape`.
    (b"-_.~", true),
];

/// Every form of `value` to redact, the value itself first, without duplicates.
pub(crate) fn encodings(value: &str) -> Vec<Zeroizing<String>> {
    let bytes = value.as_bytes();
    let mut forms: Vec<Zeroizing<String>> = Vec::new();
    let mut add = |form: String| {
        let form = Zeroizing::new(form);
        if !forms.contains(&form) {
            forms.push(form);
        }
    };

    add(value.to_owned());
    let json = json_escaped(value);
    add(ascii_only_json(&json));
    add(json);

    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        add(engine.encode(bytes));
    }

    for &(literal, space_as_plus) in PERCENT_ENCODING_STYLES {
        for uppercase in [true, false] {
            add(percent_encoded(
                bytes,
                |byte| byte.is_ascii_alphanumeric() || literal.contains(&byte),
                space_as_plus,
                uppercase,
            ));
        }
    }
    for uppercase in [true, false] {
        add(percent_encoded(bytes, |_| false, false, uppercase));
    }

    add(hex::encode(bytes));
    add(hex::encode_upper(bytes));
    add(separated_hex(bytes, false, None));
    add(separated_hex(bytes, true, None));
    for column in 0..OD_BYTES_PER_LINE {
        add(separated_hex(bytes, false, Some(column)));
    }
    forms
}

/// The value inside a JSON string literal, as serde_json, JavaScript and Go write it.
fn json_escaped(value: &str) -> String {
    let quoted = serde_json::Value::String(value.to_owned()).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}

/// The same with every non-ASCII character escaped, as Python's `json.dumps` writes it.
fn ascii_only_json(json_escaped: &str) -> String {
    let mut escaped = String::with_capacity(json_escaped.len());
    for character in json_escaped.chars() {
        if character.is_ascii() {
            escaped.push(character);
        } else {
            let mut units = [0_u16; 2];
            for unit in character.encode_utf16(&mut units) {
                let _ = write!(escaped, "\\u{unit:04x}");
            }
        }
    }
    escaped
}

fn percent_encoded(
    bytes: &[u8],
    is_literal: impl Fn(u8) -> bool,
    space_as_plus: bool,
    uppercase: bool,
) -> String {
    let mut encoded = String::with_capacity(bytes.len() * 3);
    for &byte in bytes {
        if space_as_plus && byte == b' ' {
            encoded.push('+');
        } else if is_literal(byte) {
            encoded.push(char::from(byte));
        } else if uppercase {
            let _ = write!(encoded, "%{byte:02X}");
        } else {
            let _ = write!(encoded, "%{byte:02x}");
        }
    }
    encoded
}

/// Two hex digits per byte separated by spaces ("73 65 63"). With `od_start_column`, as
/// `od -An -tx1` prints the bytes when the first one lands in that column of a 16-byte line:
/// after the last column comes a line break, and the next line starts with a space.
fn separated_hex(bytes: &[u8], uppercase: bool, od_start_column: Option<usize>) -> String {
    let mut encoded = String::with_capacity(bytes.len() * 3);
    for (index, &byte) in bytes.iter().enumerate() {
        if index > 0 {
            let wraps =
                od_start_column.is_some_and(|column| (column + index) % OD_BYTES_PER_LINE == 0);
            encoded.push_str(if wraps { "\n " } else { " " });
        }
        if uppercase {
            let _ = write!(encoded, "{byte:02X}");
        } else {
            let _ = write!(encoded, "{byte:02x}");
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forms(value: &str) -> Vec<String> {
        encodings(value)
            .iter()
            .map(|form| form.as_str().to_owned())
            .collect()
    }

    #[test]
    fn a_plain_token_has_its_base64_and_hex_forms_once_each() {
        let forms = forms("abcd");
        assert_eq!(forms[0], "abcd");
        for expected in ["YWJjZA==", "YWJjZA", "61626364", "61 62 63 64"] {
            assert_eq!(
                forms.iter().filter(|form| *form == expected).count(),
                1,
                "{expected}"
            );
        }
        // URL-safe base64 equals the standard form here, and percent-encoding equals the value,
        // except when every byte is encoded.
        assert!(forms.contains(&"%61%62%63%64".to_owned()));
        assert_eq!(forms.iter().filter(|form| *form == "abcd").count(), 1);
    }

    #[test]
    fn percent_encoding_covers_the_styles_of_common_libraries() {
        let forms = forms("p@ss w/rd!");
        for expected in [
            "p%40ss%20w%2Frd%21", // RFC 3986, uppercase
            "p%40ss%20w%2frd%21", // RFC 3986, lowercase
            "p%40ss%20w/rd%21",   // Python quote()
            "p%40ss%20w%2Frd!",   // encodeURIComponent
            "p@ss%20w/rd!",       // encodeURI
            "p%40ss+w%2Frd%21",   // form encoding, quote_plus
        ] {
            assert!(
                forms.contains(&expected.to_owned()),
                "{expected} missing from {forms:?}"
            );
        }
    }

    #[test]
    fn json_forms_escape_quotes_and_non_ascii_characters() {
        let forms = forms("pa\"ss\\wörd");
        assert!(forms.contains(&"pa\\\"ss\\\\wörd".to_owned()));
        assert!(forms.contains(&"pa\\\"ss\\\\w\\u00f6rd".to_owned()));
        assert!(forms.contains(&"pa%22ss%5Cw%C3%B6rd".to_owned()));
    }

    #[test]
    fn ascii_only_json_uses_surrogate_pairs_beyond_the_basic_plane() {
        assert_eq!(ascii_only_json("key🔑"), "key\\ud83d\\udd11");
    }

    #[test]
    fn od_forms_break_the_line_after_the_sixteenth_column() {
        let bytes = b"0123456789abcdefghij";
        assert_eq!(
            separated_hex(bytes, false, Some(0)),
            "30 31 32 33 34 35 36 37 38 39 61 62 63 64 65 66\n 67 68 69 6a"
        );
        assert_eq!(separated_hex(b"abcd", false, Some(14)), "61 62\n 63 64");
        assert_eq!(separated_hex(b"abcd", false, Some(1)), "61 62 63 64");
    }
}
