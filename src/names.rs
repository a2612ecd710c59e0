//! File names as text, reversibly: the run log (JSON, which holds only
//! UTF-8), `-v` and `--dry-run` lines show a name's bytes as they are,
//! except that each byte of invalid UTF-8, of a control character or of a
//! bidi/separator control is
//! written `\#ooo` (three octal digits, as rsync prints names), and so is
//! a backslash that is followed by `#`.
//!
//! Invariant: [`decode`]`(`[`encode`]`(b)) == b` for all bytes, so two
//! different names never look the same and the bytes can be recovered from
//! a record (replace each `\#ooo` by the byte `ooo`).

/// `bytes` as text, reversibly (`escape::reversible`).
pub fn encode(b: &[u8]) -> String {
    crate::escape::reversible(b)
}

pub fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'#')
            && let Some(o) = b.get(i + 2..i + 5)
            && o.iter().all(|d| (b'0'..=b'7').contains(d))
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(o).unwrap_or("x"), 8)
        {
            out.push(v);
            i += 5;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_controls_and_backslash_hash_are_octal() {
        assert_eq!(encode(b"caf\xe9"), "caf\\#351");
        assert_eq!(encode(b"caf\xff"), "caf\\#377");
        assert_ne!(encode(b"caf\xe9"), encode(b"caf\xff"));
        assert_eq!(encode(b"a\nb"), "a\\#012b");
        assert_eq!(encode(b"x\\#351"), "x\\#134#351");
        assert_eq!(encode("ünï".as_bytes()), "ünï");
        assert_eq!(encode(b"a\\b"), "a\\b");
    }

    #[test]
    fn decode_inverts_encode() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5000 {
            let len = (seed % 12) as usize;
            let mut v = Vec::new();
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // bias towards the interesting bytes
                let pick = [b'\\', b'#', b'0', b'7', 0xff, 0xc3, 0xa9, b'\n', b'a'];
                v.push(if seed.is_multiple_of(3) {
                    seed as u8
                } else {
                    pick[(seed % 9) as usize]
                });
            }
            assert_eq!(decode(&encode(&v)), v, "{v:?} -> {}", encode(&v));
        }
    }
}
