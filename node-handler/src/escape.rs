//! A lossless text form for the bytes a crashing process controls (its
//! comm, its executable's path, its argv), so they can travel in JSON (the
//! spool's metadata, the Coredump's spec) without being lost or mangled.
//!
//! Invariants:
//! - [`escape`] never fails and its output is valid UTF-8: valid UTF-8 runs
//!   are kept as they are, except `\`, which becomes `\\`; every byte that
//!   is not part of valid UTF-8 becomes `\xNN` (two lower-case hex digits).
//! - [`unescape`] of [`escape`] gives back the original bytes, for every
//!   input (checked by a property test).
//! - [`cut`] shortens an escaped string to a byte budget without splitting
//!   an escape sequence or a character, so a cut value still unescapes.
//!
//! The kernel hands the handler bytes (`%e`, `%E`, `/proc/<pid>/cmdline`),
//! not text: a process can name itself `"\xff\xfe"` or run from a directory
//! whose name is not UTF-8.

/// The escaped, always-UTF-8 form of `raw`.
pub fn escape(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The bytes [`escape`] was given; None for text [`escape`] cannot produce
/// (a lone `\`, an unknown escape, bad hex digits).
pub fn unescape(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('\\') {
        out.extend_from_slice(&rest.as_bytes()[..at]);
        let tail = &rest[at + 1..];
        if let Some(t) = tail.strip_prefix('\\') {
            out.push(b'\\');
            rest = t;
        } else {
            let hex = tail.strip_prefix('x')?.get(..2)?;
            // from_str_radix would accept a sign; escape never writes one.
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[3..];
        }
    }
    out.extend_from_slice(rest.as_bytes());
    Some(out)
}

/// The longest prefix of the escaped `text` of at most `max` bytes that
/// ends between two units (characters, `\\` or `\xNN`).
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let b = text.as_bytes();
    let (mut i, mut end) = (0, 0);
    while i < b.len() {
        let unit = match (b[i], b.get(i + 1)) {
            // Escapes are ASCII: `\\` is 2 bytes, `\xNN` is 4.
            (b'\\', Some(b'\\')) => 2,
            (b'\\', Some(b'x')) => 4.min(b.len() - i),
            _ => text
                .get(i..)
                .and_then(|t| t.chars().next())
                .map_or(1, char::len_utf8),
        };
        if i + unit > max {
            break;
        }
        i += unit;
        end = i;
    }
    // Only text that escape() did not write can put `end` inside a
    // character; never panic on it.
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_only_what_must_be() {
        assert_eq!(escape(b"/usr/bin/app"), "/usr/bin/app");
        assert_eq!(escape(b"\xff\xfe"), "\\xff\\xfe");
        assert_eq!(escape("é\\x".as_bytes()), "é\\\\x");
        // A cut UTF-8 sequence is escaped byte by byte.
        assert_eq!(escape(b"a\xc3"), "a\\xc3");
        assert_eq!(unescape("\\xff\\xfe").as_deref(), Some(&b"\xff\xfe"[..]));
        for bad in ["\\", "\\q", "\\x", "\\xf", "\\xzz", "\\x+f"] {
            assert_eq!(unescape(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cuts_between_units() {
        let e = escape(b"ab\xffc");
        assert_eq!(e, "ab\\xffc");
        assert_eq!(cut(&e, 2), "ab");
        assert_eq!(cut(&e, 3), "ab");
        assert_eq!(cut(&e, 5), "ab");
        assert_eq!(cut(&e, 6), "ab\\xff");
        assert_eq!(cut(&e, 7), "ab\\xffc");
        assert_eq!(cut("éé", 3), "é");
        assert_eq!(cut("a\\\\b", 2), "a");
        assert_eq!(cut("a\\\\b", 3), "a\\\\");
    }

    proptest! {
        // proptest's default: 256 cases, or PROPTEST_CASES (see README.md).

        #[test]
        fn escape_round_trips(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
            let e = escape(&raw);
            prop_assert_eq!(unescape(&e), Some(raw));
        }

        #[test]
        fn unescape_never_panics(text in "\\PC{0,64}|[\\\\x0-9a-fA-F]{0,16}") {
            if let Some(raw) = unescape(&text) {
                // Whatever it accepts, escape writes back in its own form.
                prop_assert_eq!(unescape(&escape(&raw)), Some(raw));
            }
        }

        #[test]
        fn cut_is_bounded_and_still_unescapes(
            raw in proptest::collection::vec(any::<u8>(), 0..100),
            max in 0usize..300,
        ) {
            let e = escape(&raw);
            let c = cut(&e, max);
            prop_assert!(c.len() <= max);
            prop_assert!(e.starts_with(c));
            let back = unescape(c);
            prop_assert!(back.as_ref().is_some_and(|b| raw.starts_with(b)), "{:?}", back);
        }
    }
}
