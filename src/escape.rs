//! Text from outside (file names, symlink targets, remote messages, log
//! records) made safe to print on a terminal or into the journal.
//!
//! Invariant: the output holds no control character (C0, DEL, C1: no
//! newline, carriage return or ESC, so no forged line, `<N>` journal
//! priority or terminal sequence), no Unicode bidirectional or line/
//! paragraph separator control, and no invalid UTF-8; each such byte is
//! written as rsync does, `\#ooo` (octal); `reversible` also escapes a
//! backslash before `#`, so that `names::decode` gives the bytes back.
//! Everything else is kept as is.

/// Characters that reorder or break displayed text without being control
/// characters: bidi embeddings, overrides and isolates, marks, separators.
fn is_format_hazard(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn push_octal(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push_str(&format!("\\#{b:03o}"));
    }
}

/// Bytes (a file name, a symlink target) as printable text.
pub fn bytes(b: &[u8]) -> String {
    octal(b, false)
}

/// [`bytes`], and a backslash before `#` too, so that `names::decode`
/// gives the bytes back (names in records).
pub fn reversible(b: &[u8]) -> String {
    octal(b, true)
}

fn octal(b: &[u8], reversible: bool) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        let mut chars = chunk.valid().chars().peekable();
        while let Some(c) = chars.next() {
            let hash = reversible && c == '\\' && chars.peek() == Some(&'#');
            if c.is_control() || is_format_hazard(c) || hash {
                let mut buf = [0u8; 4];
                push_octal(&mut out, c.encode_utf8(&mut buf).as_bytes());
            } else {
                out.push(c);
            }
        }
        push_octal(&mut out, chunk.invalid());
    }
    out
}

/// A message that may carry names from outside, as one printable line.
pub fn text(s: &str) -> String {
    if s.chars().any(|c| c.is_control() || is_format_hazard(c)) {
        bytes(s.as_bytes())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_separators_and_bad_utf8_are_octal() {
        assert_eq!(bytes(b"a\nb"), "a\\#012b");
        assert_eq!(bytes(b"\x1b[31m"), "\\#033[31m");
        assert_eq!(bytes(b"x\xffy"), "x\\#377y");
        assert_eq!(text("r\u{202E}txt.exe"), "r\\#342\\#200\\#256txt.exe");
        assert_eq!(text("\u{85}"), "\\#302\\#205");
        assert_eq!(text("ünï code <0>"), "ünï code <0>");
        assert!(!text("a\n<0>forged").contains('\n'));
    }
}
