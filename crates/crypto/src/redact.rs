//! Replacing secret values, and their common encodings, in text that leaves a worker: event
//! payloads, log lines, error messages, diffs.

mod encodings;

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use aho_corasick::automaton::Automaton as _;
use aho_corasick::nfa::contiguous::NFA;
use aho_corasick::{Anchored, Input, Match, MatchKind};
use secrecy::{ExposeSecret as _, SecretString};
use zeroize::Zeroizing;

/// Values shorter than this many bytes are not redacted: a two-letter secret would turn every
/// occurrence of those letters in every log into noise. Secret stores should refuse such values
/// in the first place; [`Redactor::skipped`] names them so callers can warn.
pub const MIN_REDACTED_LEN: usize = 4;

/// Replaces every occurrence of a set of secret values with `[REDACTED:NAME]`.
///
/// Besides the value itself it finds (see `docs/SECURITY.md` for the exact list):
/// - the value inside a JSON string (escaped quotes and backslashes; also `\uXXXX` for every
///   non-ASCII character, as Python writes it);
/// - standard and URL-safe base64, with and without padding, of the value on its own;
/// - percent-encoding as common libraries write it (RFC 3986, `encodeURIComponent`,
///   `encodeURI`, form encoding with `+` for spaces, every byte encoded), uppercase and
///   lowercase hex digits;
/// - hex, lowercase and uppercase, contiguous or with a space between bytes, and as
///   `od -An -tx1` prints it, including its line breaks every 16 bytes;
/// - all of the above for the value without leading and trailing whitespace, since values
///   pasted from files often end with a newline the program using them does not print.
///
/// Not found: base64 of the value embedded in a longer base64 string (it encodes differently
/// in each of the three byte alignments), base64 wrapped over several lines, hex dumps with
/// addresses or an ASCII column (`xxd`, `hexdump -C`), compressed or encrypted copies, and
/// values shorter than [`MIN_REDACTED_LEN`].
///
/// Where matches overlap, the leftmost wins, and of those starting at the same position the
/// longest. Cloning is cheap: clones share one search automaton.
///
/// The automaton holds the values (and their encodings) for as long as the redactor lives and
/// cannot be zeroized; keep a redactor no longer than the run that needs it.
#[derive(Clone)]
pub struct Redactor {
    inner: Arc<Inner>,
}

struct Inner {
    matcher: Option<NFA>,
    /// For each pattern of `matcher`, the index of its secret's replacement.
    replacement_of_pattern: Vec<usize>,
    replacements: Vec<String>,
    longest_pattern_len: usize,
    skipped: Vec<String>,
}

impl Redactor {
    /// Builds a redactor for `(name, value)` pairs. Names are not secret: they appear in the
    /// replacement, e.g. `[REDACTED:GITHUB_TOKEN]`. Values shorter than [`MIN_REDACTED_LEN`]
    /// bytes are skipped. When two secrets have the same value (or one's encoding equals
    /// another's), the first one given names the replacement.
    ///
    /// # Panics
    ///
    /// When the search automaton exceeds its size limit, which takes tens of megabytes of
    /// secret values; the secrets API caps values far below that.
    pub fn new(secrets: impl IntoIterator<Item = (String, SecretString)>) -> Self {
        let mut replacements = Vec::new();
        let mut skipped = Vec::new();
        let mut values: Vec<(usize, Vec<Zeroizing<String>>)> = Vec::new();
        for (name, value) in secrets {
            let value = value.expose_secret();
            let trimmed = value.trim();
            if trimmed.len() < MIN_REDACTED_LEN {
                skipped.push(name);
                continue;
            }
            let index = replacements.len();
            replacements.push(format!("[REDACTED:{name}]"));
            values.push((index, encodings::encodings(value)));
            if trimmed != value {
                values.push((index, encodings::encodings(trimmed)));
            }
        }

        let mut patterns: Vec<&str> = Vec::new();
        let mut known_patterns: HashSet<&str> = HashSet::new();
        let mut replacement_of_pattern = Vec::new();
        // Patterns go in by rank, every secret's own value before any encoding: when an
        // encoding of one secret equals another secret's value, the replacement names the
        // secret that was printed as is.
        let most_forms = values.iter().map(|(_, forms)| forms.len()).max();
        for rank in 0..most_forms.unwrap_or(0) {
            for (index, form) in values
                .iter()
                .filter_map(|(index, forms)| Some((index, forms.get(rank)?)))
            {
                if known_patterns.insert(form.as_str()) {
                    patterns.push(form.as_str());
                    replacement_of_pattern.push(*index);
                }
            }
        }
        let longest_pattern_len = patterns
            .iter()
            .map(|pattern| pattern.len())
            .max()
            .unwrap_or(0);
        let matcher = (!patterns.is_empty()).then(|| {
            // A DFA would scan a little faster, but building one takes seconds for a single
            // value of a few kilobytes; the contiguous NFA builds in linear time, and its
            // states can be walked one byte at a time (see `StreamRedactor::push`).
            NFA::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .expect("secret values fit the automaton's size limit")
        });
        Self {
            inner: Arc::new(Inner {
                matcher,
                replacement_of_pattern,
                replacements,
                longest_pattern_len,
                skipped,
            }),
        }
    }

    /// A redactor that changes nothing, for callers without secrets.
    pub fn empty() -> Self {
        Self::new([])
    }

    /// Names of the secrets that are not redacted because their value is shorter than
    /// [`MIN_REDACTED_LEN`] bytes (after trimming whitespace).
    pub fn skipped(&self) -> &[String] {
        &self.inner.skipped
    }

    /// The text with every occurrence replaced; borrowed when nothing was found.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let Some(matcher) = &self.inner.matcher else {
            return Cow::Borrowed(text);
        };
        let mut redacted: Option<String> = None;
        let mut copied_up_to = 0;
        for found in find_iter(matcher, text) {
            let redacted = redacted.get_or_insert_with(|| String::with_capacity(text.len()));
            redacted.push_str(&text[copied_up_to..found.start()]);
            redacted.push_str(self.replacement(found.pattern().as_usize()));
            copied_up_to = found.end();
        }
        match redacted {
            None => Cow::Borrowed(text),
            Some(mut redacted) => {
                redacted.push_str(&text[copied_up_to..]);
                Cow::Owned(redacted)
            }
        }
    }

    /// Redacts every string in a JSON value in place, object keys included. When a redacted
    /// key collides with another key of the same object, it gets a `#2`, `#3`, ... suffix
    /// rather than overwriting that entry.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        use serde_json::Value;
        if self.inner.matcher.is_none() {
            return;
        }
        match value {
            Value::String(text) => {
                if let Cow::Owned(redacted) = self.redact(text) {
                    *text = redacted;
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.redact_json(item);
                }
            }
            Value::Object(entries) => {
                for (key, mut item) in std::mem::take(entries) {
                    self.redact_json(&mut item);
                    let key = match self.redact(&key) {
                        Cow::Borrowed(_) => key,
                        Cow::Owned(redacted) => unused_key(entries, redacted),
                    };
                    entries.insert(key, item);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// A redactor for text that arrives in pieces (a container's output, a streamed log).
    pub fn stream(&self) -> StreamRedactor {
        StreamRedactor {
            redactor: self.clone(),
            pending: String::new(),
        }
    }

    fn replacement(&self, pattern: usize) -> &str {
        &self.inner.replacements[self.inner.replacement_of_pattern[pattern]]
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Redactor")
            .field("secrets", &self.inner.replacements.len())
            .field("patterns", &self.inner.replacement_of_pattern.len())
            .field("skipped", &self.inner.skipped)
            .finish()
    }
}

/// Leftmost-longest, non-overlapping matches in order.
fn find_iter<'a>(matcher: &'a NFA, text: &'a str) -> impl Iterator<Item = Match> + 'a {
    matcher
        .try_find_iter(Input::new(text))
        .expect("every NFA supports unanchored searches")
}

/// The earliest position at or after `from` where the rest of `text` could still grow into a
/// pattern (an anchored walk from there is still alive at the end of `text`), or `text.len()`
/// when there is none. Plain output thus flows through a stream at once, and only what could
/// be the start of a secret is held back.
///
/// Crafted text could make this quadratic (many positions whose walks die late), so after a
/// bounded amount of work it gives up and answers `from`, which is always safe.
fn open_prefix_start(matcher: &NFA, text: &[u8], from: usize) -> usize {
    let Ok(start) = matcher.start_state(Anchored::Yes) else {
        return from;
    };
    let mut budget = 2 * (text.len() - from) + 4096;
    for position in from..text.len() {
        let mut state = start;
        let mut open = true;
        for &byte in &text[position..] {
            if budget == 0 {
                return from;
            }
            budget -= 1;
            state = matcher.next_state(Anchored::Yes, state, byte);
            if matcher.is_dead(state) {
                open = false;
                break;
            }
        }
        if open {
            return position;
        }
    }
    text.len()
}

fn unused_key(entries: &serde_json::Map<String, serde_json::Value>, key: String) -> String {
    if !entries.contains_key(&key) {
        return key;
    }
    (2..)
        .map(|suffix| format!("{key}#{suffix}"))
        .find(|candidate| !entries.contains_key(candidate))
        .unwrap_or(key)
}

/// Redacts text that arrives in chunks, so that a value split across chunks is still found.
///
/// [`push`](Self::push) returns what is certain and holds back only the end of the text that
/// could be the start of a secret (or of an encoding of one) that the next chunk completes:
/// never more than the longest pattern length − 1 bytes, and nothing when the text does not end
/// like the beginning of a secret. It never emits such a prefix. [`finish`](Self::finish)
/// returns the rest.
///
/// Concatenating everything returned equals [`Redactor::redact`] of the concatenated input,
/// however the input was split.
///
/// Each push rescans the held-back text, so its cost grows with it: negligible for ordinary
/// output, and at worst proportional to the longest pattern (a few times the longest value)
/// for output that keeps almost matching a long secret.
pub struct StreamRedactor {
    redactor: Redactor,
    pending: String,
}

impl fmt::Debug for StreamRedactor {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The held-back text may be the first half of a secret.
        formatter
            .debug_struct("StreamRedactor")
            .field("redactor", &self.redactor)
            .field("pending_len", &self.pending.len())
            .finish()
    }
}

impl StreamRedactor {
    /// Adds a chunk and returns the redacted text that can no longer change (possibly empty).
    pub fn push(&mut self, chunk: &str) -> String {
        self.pending.push_str(chunk);
        let mut settled = match &self.redactor.inner.matcher {
            None => self.pending.len(),
            Some(matcher) => {
                // A match starting more than `hold_back` bytes before the end lies inside
                // `pending`: no pattern is longer than `hold_back + 1` bytes.
                let hold_back = self.redactor.inner.longest_pattern_len - 1;
                let bound = self.pending.len().saturating_sub(hold_back);
                open_prefix_start(matcher, self.pending.as_bytes(), bound)
            }
        };
        // Before `settled`, every match that starts there ends inside `pending`, and no longer
        // one can: the output up to there is decided.
        while !self.pending.is_char_boundary(settled) {
            settled -= 1;
        }
        let mut output = String::new();
        let mut copied_up_to = 0;
        if let Some(matcher) = &self.redactor.inner.matcher {
            for found in find_iter(matcher, &self.pending) {
                if found.start() >= settled {
                    break;
                }
                output.push_str(&self.pending[copied_up_to..found.start()]);
                output.push_str(self.redactor.replacement(found.pattern().as_usize()));
                copied_up_to = found.end();
            }
        }
        let emitted_up_to = copied_up_to.max(settled);
        output.push_str(&self.pending[copied_up_to..emitted_up_to]);
        self.pending.drain(..emitted_up_to);
        output
    }

    /// Ends the stream: the redacted text still held back.
    pub fn finish(self) -> String {
        self.redactor.redact(&self.pending).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn redactor(secrets: &[(&str, &str)]) -> Redactor {
        Redactor::new(
            secrets
                .iter()
                .map(|(name, value)| ((*name).to_owned(), SecretString::from(*value))),
        )
    }

    #[test]
    fn a_value_and_its_encodings_are_replaced_by_the_secret_name() {
        let redactor = redactor(&[("GITHUB_TOKEN", "ghp_s3cr3t/t0ken+x")]);
        let text = "token=ghp_s3cr3t/t0ken+x b64=Z2hwX3MzY3IzdC90MGtlbit4 \
                    hex=6768705f7333637233742f74306b656e2b78 query=ghp_s3cr3t%2Ft0ken%2Bx \
                    near-miss=ghp_s3cr3t/t0ken";
        assert_eq!(
            redactor.redact(text),
            "token=[REDACTED:GITHUB_TOKEN] b64=[REDACTED:GITHUB_TOKEN] \
             hex=[REDACTED:GITHUB_TOKEN] query=[REDACTED:GITHUB_TOKEN] \
             near-miss=ghp_s3cr3t/t0ken"
        );
    }

    #[test]
    fn every_encoding_of_a_value_is_replaced() {
        let value = "p@ss wörd/\"x\"";
        let redactor = redactor(&[("DB_PASSWORD", value)]);
        for form in encodings::encodings(value) {
            let text = format!("before {} after", form.as_str());
            assert_eq!(
                redactor.redact(&text),
                "before [REDACTED:DB_PASSWORD] after",
                "form {:?}",
                form.as_str()
            );
        }
    }

    #[test]
    fn od_output_is_redacted_exactly() {
        let redactor = redactor(&[("CANARY", "s3cr3t-canary")]);
        // printf %s "s3cr3t-canary" | od -An -tx1
        let od = " 73 33 63 72 33 74 2d 63 61 6e 61 72 79\n";
        assert_eq!(redactor.redact(od), " [REDACTED:CANARY]\n");
    }

    #[test]
    fn od_output_is_redacted_across_its_line_breaks_at_any_offset() {
        let redactor = redactor(&[("CANARY", "s3cr3t-canary-0123456789")]);
        // printf 'prefix:%s' "s3cr3t-canary-0123456789" | od -An -tx1
        let od = " 70 72 65 66 69 78 3a 73 33 63 72 33 74 2d 63 61\n \
                  6e 61 72 79 2d 30 31 32 33 34 35 36 37 38 39\n";
        assert_eq!(
            redactor.redact(od),
            " 70 72 65 66 69 78 3a [REDACTED:CANARY]\n"
        );
        // printf %s "s3cr3t-canary-0123456789" | od -An -tx1
        let od = " 73 33 63 72 33 74 2d 63 61 6e 61 72 79 2d 30 31\n \
                  32 33 34 35 36 37 38 39\n";
        assert_eq!(redactor.redact(od), " [REDACTED:CANARY]\n");
    }

    #[test]
    fn short_values_are_skipped_and_reported() {
        let redactor = redactor(&[("PIN", "123"), ("PADDED", "  ab \n"), ("TOKEN", "abcd")]);
        assert_eq!(redactor.skipped(), ["PIN", "PADDED"]);
        assert_eq!(redactor.redact("123 ab abcd"), "123 ab [REDACTED:TOKEN]");
    }

    #[test]
    fn a_value_is_also_found_without_its_surrounding_whitespace() {
        let redactor = redactor(&[("API_KEY", "sk-0123456789\n")]);
        assert_eq!(
            redactor.redact("key: sk-0123456789."),
            "key: [REDACTED:API_KEY]."
        );
        assert_eq!(
            redactor.redact("c2stMDEyMzQ1Njc4OQo= c2stMDEyMzQ1Njc4OQ=="),
            "[REDACTED:API_KEY] [REDACTED:API_KEY]"
        );
    }

    #[test]
    fn the_longest_of_overlapping_values_wins() {
        let redactor = redactor(&[("SHORT", "abcd"), ("LONG", "abcdefgh")]);
        assert_eq!(redactor.redact("xxabcdefghxx"), "xx[REDACTED:LONG]xx");
        assert_eq!(redactor.redact("xxabcdefxx"), "xx[REDACTED:SHORT]efxx");
        // The leftmost match wins, even when a longer one starts later inside it.
        let redactor = self::redactor(&[("FIRST", "wxyz"), ("SECOND", "yz0123456")]);
        assert_eq!(redactor.redact("wxyz0123456"), "[REDACTED:FIRST]0123456");
    }

    #[test]
    fn the_first_secret_names_a_shared_value() {
        let redactor = redactor(&[("ONE", "same-value"), ("TWO", "same-value")]);
        assert_eq!(redactor.redact("same-value"), "[REDACTED:ONE]");
        // A value that is another secret's hex encoding keeps its own name.
        let redactor = self::redactor(&[("TEXT", "abcd"), ("HEX", "61626364")]);
        assert_eq!(redactor.redact("61626364"), "[REDACTED:HEX]");
    }

    #[test]
    fn text_without_secrets_is_borrowed() {
        let redactor = redactor(&[("TOKEN", "abcd-efgh")]);
        assert!(matches!(redactor.redact("nothing here"), Cow::Borrowed(_)));
        assert!(matches!(
            Redactor::empty().redact("abcd-efgh"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn json_strings_and_keys_are_redacted_without_losing_entries() {
        let redactor = redactor(&[("TOKEN", "tok-123456")]);
        let mut value = json!({
            "command": "curl -H 'Authorization: Bearer tok-123456'",
            "nested": [{"env": {"TOKEN": "tok-123456", "tok-123456": true}}, 42, null],
            "[REDACTED:TOKEN]": "already there",
            "tok-123456": "dG9rLTEyMzQ1Ng==",
        });
        redactor.redact_json(&mut value);
        assert_eq!(
            value,
            json!({
                "command": "curl -H 'Authorization: Bearer [REDACTED:TOKEN]'",
                "nested": [{"env": {"TOKEN": "[REDACTED:TOKEN]", "[REDACTED:TOKEN]": true}}, 42, null],
                "[REDACTED:TOKEN]": "already there",
                "[REDACTED:TOKEN]#2": "[REDACTED:TOKEN]",
            })
        );
    }

    #[test]
    fn a_value_split_across_chunks_is_redacted() {
        let redactor = redactor(&[("TOKEN", "s3cr3t-canary")]);
        let mut stream = redactor.stream();
        let mut output = String::new();
        for chunk in ["log: s3c", "r3t-", "can", "ary done"] {
            let emitted = stream.push(chunk);
            assert!(!emitted.contains("s3c"), "emitted a prefix: {emitted:?}");
            output.push_str(&emitted);
        }
        output.push_str(&stream.finish());
        assert_eq!(output, "log: [REDACTED:TOKEN] done");
    }

    #[test]
    fn a_stream_holds_back_only_what_could_begin_a_secret() {
        let redactor = redactor(&[("TOKEN", "s3cr3t-canary")]);
        let mut stream = redactor.stream();
        assert_eq!(stream.push("plain output\n"), "plain output\n");
        assert_eq!(stream.push("almost s3cr3t-can"), "almost ");
        assert_eq!(stream.push("dle\n"), "s3cr3t-candle\n");
        // The start of its hex form ("73 33 ...") is held back too.
        assert_eq!(stream.push("bytes: 73 33"), "bytes: ");
        assert_eq!(stream.finish(), "73 33");
    }

    #[test]
    fn a_stream_holds_back_the_longest_end_that_could_still_become_a_secret() {
        let redactor = redactor(&[("TOKEN", "aaaaaaaaaaaaaaab")]);
        let mut stream = redactor.stream();
        let emitted = stream.push(&"a".repeat(1000));
        // Fifteen `a`s could still become the value; nothing longer could.
        assert_eq!(emitted.len(), 1000 - 15);
        assert_eq!(stream.finish(), "a".repeat(15));
    }

    #[test]
    fn crafted_output_falls_back_to_the_full_hold_back_and_stays_correct() {
        // Every position starts a long walk that dies only at the final byte.
        let value = format!("{}b", "a".repeat(3000));
        let redactor = redactor(&[("LONG", &value)]);
        let text = format!("{}c{}x{value}y", "a".repeat(5000), "a".repeat(2999));
        let mut stream = redactor.stream();
        let mut output = String::new();
        for chunk in text.as_bytes().chunks(1000) {
            output.push_str(&stream.push(std::str::from_utf8(chunk).unwrap()));
        }
        output.push_str(&stream.finish());
        assert_eq!(output, redactor.redact(&text));
        assert!(output.ends_with("x[REDACTED:LONG]y"));
    }

    #[test]
    fn a_stream_never_splits_a_character() {
        let redactor = redactor(&[("TOKEN", "abcd")]);
        let mut stream = redactor.stream();
        let mut output = String::new();
        for _ in 0..50 {
            output.push_str(&stream.push("ééé🔑"));
        }
        output.push_str(&stream.finish());
        assert_eq!(output, "ééé🔑".repeat(50));
    }

    #[test]
    fn without_secrets_a_stream_passes_chunks_through_at_once() {
        let mut stream = Redactor::empty().stream();
        assert_eq!(stream.push("hello "), "hello ");
        assert_eq!(stream.push("world"), "world");
        assert_eq!(stream.finish(), "");
    }

    #[test]
    fn debug_output_shows_no_value() {
        let redactor = redactor(&[("TOKEN", "s3cr3t-canary"), ("PIN", "1")]);
        let mut stream = redactor.stream();
        let _ = stream.push("s3cr3t-can");
        let debug = format!("{redactor:?} {stream:?}");
        assert!(
            !debug.contains("s3cr3t") && !debug.contains("can"),
            "{debug}"
        );
        assert!(debug.contains("skipped: [\"PIN\"]"), "{debug}");
    }
}
